//! Versions and formats: what this build is, what it reads and writes, and the cluster
//! version that decides which of its forms a cluster may use.
//!
//! Every member announces the version it runs on each peer stream it opens or answers
//! (`x-metcd-version`; a v0.1.0 member announces nothing and counts as 0.1.0). The leader
//! proposes the cluster version, the lowest version of the members once every voter and
//! learner has announced one, as a log entry, so every member applies it at the same index
//! (`node/versions.rs`). Until the cluster version allows a form, no member proposes it:
//!
//! | form, added in 0.2.0                                  | at cluster version 0.1.0       |
//! |-------------------------------------------------------|--------------------------------|
//! | lease grants, keepalives and alarms checked (`0x0e`)  | proposed unchecked, as 0.1.0   |
//! | auth changes (`0x0d`, checked with auth on)           | refused ([`Feature::AuthChanges`]) |
//! | a membership change's client checked at apply         | not checked at apply           |
//! | the cluster version entry (`0x11`)                    | proposed when every member is 0.2.0 |
//! | data dir format 2                                     | format 1, readable by 0.1.0    |
//!
//! The cluster version only rises. A data dir moves to format 2 in the same atomic write that
//! first stores a 0.2.0-only entry (the cluster version entry, or a snapshot taken after it),
//! so a data dir that 0.1.0 can start on holds nothing it would misread.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

/// A release line, `major.minor`: what cluster versions and compatibility are decided on.
/// Patch releases never change a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32) -> Version {
        Version { major, minor }
    }

    /// Parses `major.minor` or `major.minor.patch` (the patch is ignored).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        match parts.next() {
            None => {}
            Some(patch) => {
                // Pre-release or build suffixes are part of the patch field.
                let digits = patch.split(['-', '+']).next()?;
                digits.parse::<u32>().ok()?;
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Version { major, minor })
    }

    /// What a peer's `x-metcd-version` header says it runs: none means 0.1.0.
    pub fn announced(header: Option<&str>) -> Option<Version> {
        match header {
            None => Some(V0_1),
            Some(text) => Version::parse(text),
        }
    }

    /// A compact form for an atomic: major in the high half.
    pub const fn to_u64(self) -> u64 {
        ((self.major as u64) << 32) | self.minor as u64
    }

    pub const fn from_u64(n: u64) -> Version {
        Version {
            major: (n >> 32) as u32,
            minor: n as u32,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.0", self.major, self.minor)
    }
}

/// The first release, which announces no version.
pub const V0_1: Version = Version::new(0, 1);
/// This build's release line (checked against Cargo.toml's version by a unit test).
pub const THIS: Version = Version::new(0, 2);
/// The lowest cluster version this build runs in: a member of 0.N works in a cluster at
/// 0.(N-1) or 0.N (the compatibility window, docs/upgrading.md).
pub const OLDEST_CLUSTER: Version = V0_1;
/// The cluster version a cluster bootstrapped by this build starts at. Later releases keep
/// it (members of different releases bootstrapping one cluster must agree on it) until they
/// stop running in a cluster at it.
pub const BOOTSTRAP: Version = Version::new(0, 2);
/// This build's full version, as announced to peers and printed by `--version`.
pub const FULL: &str = env!("CARGO_PKG_VERSION");
/// The commit this build was made from (`git rev-parse --short=12 HEAD` at build time).
pub const COMMIT: &str = env!("METCD_COMMIT");

/// The header a member announces its version in, on every peer stream and its answer.
pub const HEADER: &str = "x-metcd-version";

/// The header a member announces its name (`--name`) in, percent-encoded, beside its version
/// (none from a release before names: it is then shown as `metcd-<id>`).
pub const NAME_HEADER: &str = "x-metcd-name";

/// Data dir formats: 1 is v0.1.0's; 2 marks a data dir that may hold 0.2.0-only entries (and
/// carries a record v0.1.0 refuses to start on). This build reads both and writes 2 once the
/// cluster version is 0.2.0.
pub const DATA_DIR_FORMAT: u32 = 2;
pub const OLDEST_DATA_DIR_FORMAT: u32 = 1;

/// A feature the cluster version gates: refused, naming the member holding it back, until
/// the cluster version reaches [`Feature::needs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Users, roles, permissions, auth enable/disable: 0.2.0 checks them at apply against the
    /// auth revision they were checked at, in a form 0.1.0 applies as a no-op.
    AuthChanges,
}

impl Feature {
    pub fn needs(self) -> Version {
        match self {
            Feature::AuthChanges => Version::new(0, 2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::AuthChanges => "auth changes (users, roles, permissions, auth enable/disable)",
        }
    }
}

/// Whether a lease grant, keepalive or alarm may travel in the checked form.
pub fn checks_privileged_writes(cluster: Version) -> bool {
    cluster >= Version::new(0, 2)
}

/// Whether a membership change's client is checked again at apply (0.1.0 members do not).
pub fn checks_member_changes_at_apply(cluster: Version) -> bool {
    cluster >= Version::new(0, 2)
}

/// What this member knows of versions: the cluster version it applied, and what each peer
/// announced on its latest connection (either direction). Shared by the owner (which decides
/// and applies the cluster version), the transport and the peer server (which refuse peers
/// below the cluster version).
pub struct Known {
    cluster: AtomicU64,
    peers: RwLock<BTreeMap<u64, Version>>,
    /// The names peers announced, and this member's own (percent-encoded for the header).
    names: RwLock<BTreeMap<u64, String>>,
    own_name: String,
}

impl Known {
    pub fn new(cluster: Version) -> Known {
        Known::named(cluster, "")
    }

    pub fn named(cluster: Version, own_name: &str) -> Known {
        let own_name =
            percent_encoding::utf8_percent_encode(own_name, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        Known {
            cluster: AtomicU64::new(cluster.to_u64()),
            peers: RwLock::new(BTreeMap::new()),
            names: RwLock::new(BTreeMap::new()),
            own_name,
        }
    }

    /// This member's name as [`NAME_HEADER`] carries it.
    pub fn own_name_header(&self) -> &str {
        &self.own_name
    }

    /// Records the name `peer` announced in `headers` (a release before names: `metcd-<id>`).
    pub fn announce_name(&self, peer: u64, headers: &hyper::HeaderMap) {
        let name = match headers.get(NAME_HEADER).and_then(|v| v.to_str().ok()) {
            Some(v) => percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned(),
            None => format!("metcd-{peer}"),
        };
        self.names.write().insert(peer, name);
    }

    /// The name `peer` announced on its latest connection.
    pub fn name_of(&self, peer: u64) -> Option<String> {
        self.names.read().get(&peer).cloned()
    }

    /// The cluster version as applied here.
    pub fn cluster(&self) -> Version {
        Version::from_u64(self.cluster.load(Ordering::Relaxed))
    }

    pub fn set_cluster(&self, v: Version) {
        self.cluster.store(v.to_u64(), Ordering::Relaxed);
    }

    /// Records what `peer` announced on a connection just opened; a restart on another
    /// release replaces it on its first connection.
    pub fn announce(&self, peer: u64, v: Version) {
        let before = self.peers.write().insert(peer, v);
        if before != Some(v) {
            tracing::info!(peer, version = %v, "a peer announced its version");
        }
    }

    pub fn of(&self, peer: u64) -> Option<Version> {
        self.peers.read().get(&peer).copied()
    }

    pub fn peers(&self) -> BTreeMap<u64, Version> {
        self.peers.read().clone()
    }

    /// Whether a peer announcing `theirs` may exchange raft messages with this member: not
    /// once the cluster version is above it (its release would misread what is written now).
    pub fn admits(&self, peer: u64, theirs: Version) -> Result<(), String> {
        let cluster = self.cluster();
        if theirs >= cluster {
            return Ok(());
        }
        Err(format!(
            "member {peer} runs metcd {theirs}, below the cluster version {cluster}: it would misread \
             entries written at {cluster}. Start metcd {cluster} or newer on its data dir (docs/upgrading.md)"
        ))
    }

    /// Why `feature` is refused at cluster version `cluster`: the members holding it back.
    pub fn refusal(&self, feature: Feature, cluster: Version, members: &[u64], me: u64) -> String {
        let peers = self.peers.read();
        let behind: Vec<String> = members
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| match peers.get(id) {
                Some(v) if *v >= feature.needs() => None,
                Some(v) => Some(format!("member {id} runs metcd {v}")),
                None => Some(format!(
                    "member {id} has not announced a version to this member"
                )),
            })
            .collect();
        let why = if behind.is_empty() {
            "every member runs it now; the leader raises the cluster version within seconds"
                .to_string()
        } else {
            behind.join(", ")
        };
        format!(
            "{} need cluster version {}; the cluster is at {cluster} ({why}). Upgrade every \
             member first (docs/upgrading.md)",
            feature.name(),
            feature.needs()
        )
    }
}

/// [`long`], made once, for clap.
pub fn long_text() -> &'static str {
    static TEXT: std::sync::LazyLock<String> = std::sync::LazyLock::new(long);
    TEXT.as_str()
}

/// Whether an auth change records the user's `since` (v0.1.0 members do not keep it).
pub fn records_user_since(cluster: Version) -> bool {
    cluster >= Version::new(0, 2)
}

/// `metcd --version`: the version, the commit and the formats this build reads and writes.
pub fn long() -> String {
    format!(
        "{FULL} (commit {COMMIT})
release line:      {THIS} (runs in a cluster at {OLDEST_CLUSTER} or {THIS}; a new cluster starts at {BOOTSTRAP})
log entries:       reads kinds 0x01-0x0e, 0x10 and 0x11 (cluster version); writes checked lease,
                   alarm and auth changes (0x0e) and 0x11 only at cluster version 0.2.0
data dir:          format {DATA_DIR_FORMAT} (reads {OLDEST_DATA_DIR_FORMAT}-{DATA_DIR_FORMAT}; moves to {DATA_DIR_FORMAT} when the cluster version reaches 0.2.0)
keyspace layout:   {} (converts 2)
snapshot format:   METCDSN3 (reads METCDSN2)
peer protocol:     metcd-raft/1, announcing the version in {HEADER}",
        crate::store::layout::LAYOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_is_the_crate_version() {
        assert_eq!(Version::parse(FULL), Some(THIS));
    }

    #[test]
    fn parses_and_orders() {
        assert_eq!(Version::parse("0.2"), Some(Version::new(0, 2)));
        assert_eq!(Version::parse("0.2.7"), Some(Version::new(0, 2)));
        assert_eq!(Version::parse("1.10.0-rc1"), Some(Version::new(1, 10)));
        for bad in ["", "0", "a.b", "0.2.x", "0.2.0.1", "-1.2"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert!(Version::new(0, 10) > Version::new(0, 9));
        assert!(Version::new(1, 0) > Version::new(0, 99));
        assert_eq!(Version::announced(None), Some(V0_1));
        assert_eq!(Version::announced(Some("junk")), None);
        let v = Version::new(3, 7);
        assert_eq!(Version::from_u64(v.to_u64()), v);
        assert_eq!(v.to_string(), "3.7.0");
    }
}
