//! Command-line configuration: the one place flags are read and checked.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::local_cluster::LocalClusterArgs;
use crate::storage::{EngineKind, EngineOptions};

/// metcd: a Raft-replicated key-value store with a curl-friendly HTTP API.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "metcd",
    version,
    long_version = crate::version::long_text(),
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Subcommand>,
    /// This member's id: its 1-based position in --cluster, or the id given there as ID=URL
    /// [default: 1, or the position of --name in a NAME=URL --cluster]
    #[arg(long)]
    pub id: Option<u64>,
    /// This member's name (etcd's --name), shown in member lists, status, logs and metrics
    /// [default: its name in a NAME=URL --cluster, else metcd-<id>]
    #[arg(long)]
    pub name: Option<String>,
    /// Comma-separated peer URLs of the members (`URL,...` with ids 1, 2, ... in order,
    /// `ID=URL,...`, or etcd's --initial-cluster form `NAME=URL,...` with ids by position);
    /// each member serves peer traffic on its own. Read when a member first starts; afterwards
    /// the replicated membership is authoritative.
    #[arg(long, default_value = "http://127.0.0.1:3380")]
    pub cluster: String,
    /// Join an existing cluster (after `PUT /_members/<id>` on it) instead of starting a new
    /// one; --cluster must reach at least one current member.
    #[arg(long)]
    pub join: bool,
    /// Part of the id of a new cluster (etcd's --initial-cluster-token): clusters started from
    /// the same peer URLs with different tokens refuse each other's traffic. Without it, a
    /// cluster whose --cluster names only this member gets a random id. Read on first start.
    #[arg(long, value_name = "TOKEN")]
    pub cluster_token: Option<String>,
    /// A learner added without `?learner=true` is promoted to voter once its log is within
    /// this many entries of the leader's.
    #[arg(long, default_value_t = 1_000)]
    pub promote_within: u64,
    /// `/_health` fails when this member's applied index is more than this many entries
    /// behind its commit index.
    #[arg(long, default_value_t = 1_000)]
    pub health_max_lag: u64,
    /// Dial member ID at HOST:PORT instead of its peer URL (repeatable), e.g. through a proxy
    /// that a fault-injection harness controls. The member's URL stays as it is.
    #[arg(long = "peer-dial", value_name = "ID=HOST:PORT")]
    pub peer_dial: Vec<String>,
    /// Client HTTP port.
    #[arg(long, default_value_t = 3379)]
    pub port: u16,
    /// Address the client HTTP port listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_addr: IpAddr,
    /// Data directory (raft log, snapshots, engine files). Default: metcd-<id>.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Snapshot and compact the log after this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// Automatic compaction of history (etcd's modes): `revision` keeps the newest
    /// --auto-compaction-retention revisions; `periodic` keeps that much time.
    #[arg(long, value_enum, default_value = "revision")]
    pub auto_compaction_mode: CompactionMode,
    /// For `revision`: a number of revisions. For `periodic`: a duration such as `30m`, `1h`,
    /// `90s`, or a number of hours as etcd takes it. `0` turns automatic compaction off.
    #[arg(long, default_value = "100000")]
    pub auto_compaction_retention: String,
    /// State machine engine: btree (redb, read-heavy), lsm (fjall, write-heavy) or memory.
    #[arg(long, value_enum, default_value = "btree")]
    pub engine: EngineKind,
    /// The btree engine's page cache, in MiB (the operating system's page cache holds the rest
    /// of the file; reads that miss go to it).
    #[arg(long, default_value_t = (EngineOptions::default().btree_cache_bytes >> 20) as u64)]
    pub btree_cache_mb: u64,
    /// How long a client request may wait for a leader, a commit or a read barrier.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Largest accepted request body (value), in bytes.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Largest accepted key, in bytes.
    #[arg(long, default_value_t = 8_192)]
    pub max_key_bytes: usize,
    /// Raft heartbeat interval (one raft tick).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout; a multiple of --heartbeat-ms.
    #[arg(long, default_value_t = 1_000)]
    pub election_ms: u64,
    /// Space quota of the store's files (engine and snapshots), in bytes; 0: none. A write that
    /// adds data past it raises a NOSPACE alarm, and the cluster refuses such writes until
    /// the alarm is disarmed (etcd's --quota-backend-bytes; etcd's default is 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// How often a gRPC watcher created with progress_notify gets a progress response when
    /// it has had no events (etcd's --experimental-watch-progress-notify-interval, 10 min).
    #[arg(long, default_value_t = 600_000)]
    pub watch_progress_notify_ms: u64,
    /// Log filter, e.g. `info` or `metcd=debug,raft=info`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// TLS on the client port (HTTP and gRPC): this member's certificate (PEM; a chain
    /// may follow it). With --key-file. Clients then use https://.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub cert_file: Option<PathBuf>,
    /// The private key of --cert-file (PEM).
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that client certificates are verified against; a client
    /// certificate is then optional unless --client-cert-auth.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require every client to present a certificate from --trusted-ca-file.
    #[arg(long, help_heading = "Security")]
    pub client_cert_auth: bool,
    /// Mutual TLS between members: this member's peer certificate (PEM), used both to serve
    /// its peer port and to dial its peers. With --peer-key-file and --peer-trusted-ca-file,
    /// and https:// URLs in --cluster.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that peers' certificates must chain to.
    #[arg(long, value_name = "FILE", help_heading = "Security")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Accept only peers whose certificate's subject CN is exactly this.
    #[arg(long, value_name = "CN", help_heading = "Security")]
    pub peer_allowed_cn: Option<String>,
    /// Accept only peers whose certificate names this host (a DNS or IP alternative name).
    #[arg(long, value_name = "HOST", help_heading = "Security")]
    pub peer_allowed_hostname: Option<String>,
    /// Start even though --peer-trusted-ca-file is (or signed) the client port's CA and no
    /// --peer-allowed-cn/--peer-allowed-hostname pins the members: any client certificate
    /// from that CA is then admitted to the peer port as a member (etcd's behaviour).
    #[arg(long, help_heading = "Security")]
    pub insecure_peer_shared_ca: bool,
    /// With auth enabled: how long a token from Authenticate (or `POST /_auth/authenticate`)
    /// is valid, in seconds (etcd's --auth-token-ttl).
    #[arg(long, default_value_t = 300, help_heading = "Security")]
    pub auth_token_ttl: u64,
    /// With auth enabled, `/_metrics` and `/_health` need root credentials too (by default
    /// they stay open, as etcd's /metrics and /health, for monitoring).
    #[arg(long, help_heading = "Security")]
    pub auth_protect_metrics: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--id {id} is out of range: --cluster lists {n} member(s), ids are 1..={n}")]
    IdOutOfRange { id: u64, n: usize },
    #[error(
        "malformed peer URL {url:?} in --cluster: {why} (expected http://host:port, or https://host:port with peer TLS)"
    )]
    BadUrl { url: String, why: String },
    #[error("peer URL {0} appears twice in --cluster")]
    DuplicateUrl(String),
    #[error("member id {0} appears twice in --cluster")]
    DuplicateId(u64),
    #[error("--id {0} is not among the ids in --cluster")]
    UnknownId(u64),
    #[error("{0}")]
    Invalid(String),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Subcommand {
    /// Start a local cluster of 3 members on this machine for trying metcd out.
    LocalCluster(LocalClusterArgs),
    /// Backups (take one with `etcdctl snapshot save`).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SnapshotCommand {
    /// Make a new member's data dir from a backup: `metcd snapshot restore FILE --id N
    /// --cluster URLS --data-dir DIR` (the flags of the member to start), once per member of
    /// the new cluster; then start each member with the same flags.
    Restore {
        /// The backup file (`etcdctl snapshot save FILE`).
        file: PathBuf,
        /// The new member's flags, as it will be started with.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        member_flags: Vec<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompactionMode {
    Revision,
    Periodic,
}

/// What automatic compaction keeps, decided from the two flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// The newest this many revisions.
    Revisions(u64),
    /// The revisions of this much time.
    Period(Duration),
}

impl AutoCompaction {
    fn parse(mode: CompactionMode, retention: &str) -> Result<AutoCompaction, ConfigError> {
        let r = retention.trim();
        let bad = |want: &str| {
            ConfigError::Invalid(format!(
                "--auto-compaction-retention {r:?}: expected {want}"
            ))
        };
        let parsed = match mode {
            CompactionMode::Revision => {
                let n = r.parse::<u64>().map_err(|_| bad("a number of revisions"))?;
                AutoCompaction::Revisions(n)
            }
            CompactionMode::Periodic => {
                let (digits, unit) =
                    r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len()));
                let n = digits
                    .parse::<u64>()
                    .map_err(|_| bad("a duration such as 30m or 1h"))?;
                let secs = match unit {
                    "" | "h" => n.checked_mul(3600),
                    "m" => n.checked_mul(60),
                    "s" => Some(n),
                    _ => None,
                };
                AutoCompaction::Period(Duration::from_secs(
                    secs.ok_or_else(|| bad("a duration such as 30m or 1h"))?,
                ))
            }
        };
        Ok(match parsed {
            AutoCompaction::Revisions(0) => AutoCompaction::Off,
            AutoCompaction::Period(d) if d.is_zero() => AutoCompaction::Off,
            other => other,
        })
    }
}

/// One member named on the command line.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    /// Normalized `http://host:port`, or `https://host:port` with peer TLS.
    pub url: String,
    /// `host:port`, for connecting and listening.
    pub authority: String,
}

/// The checked, derived settings the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: u64,
    /// This member's name (`--name`): how it is shown to people, never how it is addressed.
    pub name: String,
    pub members: Vec<Member>,
    /// The id a new cluster of `members` gets (from their URLs and `--cluster-token`), until
    /// start-up replaces it: a member that joins or restarts uses the recorded one, and one
    /// that starts a cluster of itself alone without a token draws a random one.
    pub cluster_id: u64,
    /// A new cluster of this member alone, without a token: its id is drawn at random, so a
    /// founder whose data was lost can never pass for the cluster it founded.
    pub random_cluster_id: bool,
    pub join: bool,
    pub promote_within: u64,
    pub health_max_lag: u64,
    /// Member id -> host:port to dial instead of its peer URL (`--peer-dial`).
    pub peer_dial: std::collections::HashMap<u64, String>,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineKind,
    pub engine_options: EngineOptions,
    pub auto_compaction: AutoCompaction,
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for followers that are only a little behind.
    pub catch_up_entries: u64,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_key_bytes: usize,
    pub tick: Duration,
    pub election_ticks: usize,
    pub watch_progress_notify: Duration,
    pub quota_backend_bytes: u64,
    pub client_tls: Option<crate::tls::ClientPortTls>,
    pub peer_tls: Option<crate::tls::PeerTls>,
    pub auth_token_ttl: Duration,
    pub auth_protect_metrics: bool,
}

impl Settings {
    /// The URL clients reach this member at: the client port on the host of its peer URL
    /// (the address other members already reach it at), or on the listen address.
    pub fn client_url(&self) -> String {
        let port = self.client_listen.port();
        let host = self
            .members
            .iter()
            .find(|m| m.id == self.id)
            .and_then(|m| m.authority.rsplit_once(':'))
            .map(|(host, _)| host.to_string())
            .unwrap_or_else(|| match self.client_listen.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            });
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{port}")
    }
}

/// The `host:port` of a normalized peer URL.
pub fn authority_of(url: &str) -> &str {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
}

/// Checks and normalizes a peer URL: `(http[s]://host:port, host:port)`.
pub fn parse_url(url: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let trimmed = url.trim();
    let (scheme, rest) = [("https", "https://"), ("http", "http://")]
        .into_iter()
        .find_map(|(scheme, prefix)| Some((scheme, trimmed.strip_prefix(prefix)?)))
        .ok_or_else(|| bad("scheme must be http:// or https://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad("no host:port, or a path"));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("missing port"))?;
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number in 1..=65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    let authority = format!("{host}:{port}");
    Ok((format!("{scheme}://{authority}"), authority))
}

/// FNV-1a over the sorted member URLs and the token: the same list and token give the same
/// id on every member. Without a token the id is the one earlier versions computed.
pub fn cluster_id(urls: &[String], token: Option<&str>) -> u64 {
    let mut sorted: Vec<&str> = urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut text = sorted.join(",");
    if let Some(token) = token {
        // A newline cannot appear in a URL, so no list and token collide with another.
        text.push('\n');
        text.push_str(token);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Parses `URL,...` (ids by position), `ID=URL,...`, or `NAME=URL,...` (etcd's
/// --initial-cluster: ids by position); answers the names too (empty unless NAME=URL).
fn parse_cluster(list: &str) -> Result<(Vec<Member>, Vec<String>), ConfigError> {
    let named = list.split(',').all(|raw| {
        raw.split_once('=')
            .is_some_and(|(name, _)| name.trim().parse::<u64>().is_err())
    });
    let explicit = list.contains('=') && !named;
    let mut members: Vec<Member> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, raw) in list.split(',').enumerate() {
        let (id, raw_url) = if named {
            let (name, url) = raw.split_once('=').unwrap_or(("", raw));
            let name = check_name(name.trim())?;
            if names.contains(&name) {
                return Err(ConfigError::Invalid(format!(
                    "member name {name:?} appears twice in --cluster"
                )));
            }
            names.push(name);
            (i as u64 + 1, url)
        } else if explicit {
            let (id, url) = raw.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "--cluster entry {raw:?}: give every entry as ID=URL, or none"
                ))
            })?;
            let id = id
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "--cluster entry {raw:?}: the id must be a positive number"
                    ))
                })?;
            (id, url)
        } else {
            (i as u64 + 1, raw)
        };
        let (url, authority) = parse_url(raw_url)?;
        if members.iter().any(|m| m.url == url) {
            return Err(ConfigError::DuplicateUrl(url));
        }
        if members.iter().any(|m| m.id == id) {
            return Err(ConfigError::DuplicateId(id));
        }
        members.push(Member { id, url, authority });
    }
    Ok((members, names))
}

/// A member name: printable, on one line, at most 256 bytes.
fn check_name(name: &str) -> Result<String, ConfigError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ConfigError::Invalid(format!(
            "member name {name:?}: give 1 to 256 bytes of printable characters"
        )));
    }
    Ok(name.to_string())
}

impl Config {
    /// This member's id and name, from --id, --name and a NAME=URL --cluster.
    fn identity(&self, members: &[Member], names: &[String]) -> Result<(u64, String), ConfigError> {
        // With NAME=URL entries, --name picks this member's entry unless --id does.
        let by_name = self.name.as_ref().and_then(|want| {
            names
                .iter()
                .position(|name| name == want)
                .map(|i| i as u64 + 1)
        });
        let id = match (self.id, by_name) {
            (Some(id), _) => id,
            (None, Some(id)) => id,
            (None, None) if self.name.is_some() && !names.is_empty() => {
                return Err(ConfigError::Invalid(format!(
                    "--name {:?} is not among the names in --cluster",
                    self.name.as_deref().unwrap_or_default()
                )));
            }
            (None, None) => 1,
        };
        if !members.iter().any(|m| m.id == id) {
            let explicit_ids = self.cluster.contains('=') && names.is_empty();
            return Err(if explicit_ids {
                ConfigError::UnknownId(id)
            } else {
                ConfigError::IdOutOfRange {
                    id,
                    n: members.len(),
                }
            });
        }
        let listed = (id as usize)
            .checked_sub(1)
            .and_then(|i| names.get(i))
            .cloned();
        let name = match (&self.name, listed) {
            (Some(name), Some(listed)) if *name != listed => {
                return Err(ConfigError::Invalid(format!(
                    "--name {name:?}, but --cluster names member {id} {listed:?}"
                )));
            }
            (Some(name), _) => check_name(name)?,
            (None, Some(listed)) => listed,
            (None, None) => format!("metcd-{id}"),
        };
        Ok((id, name))
    }

    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let (members, names) = parse_cluster(&self.cluster)?;
        let (id, name) = self.identity(&members, &names)?;
        let me = members
            .iter()
            .find(|m| m.id == id)
            .ok_or(ConfigError::UnknownId(id))?;
        let peer_listen = me
            .authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError::BadUrl {
                url: me.url.clone(),
                why: "host does not resolve".into(),
            })?;
        self.check_numbers()?;
        let peer_dial = parse_peer_dial(&self.peer_dial)?;
        let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
        let token = self.cluster_token.as_deref();
        if token.is_some_and(|t| t.is_empty() || t.contains(['\n', '\r'])) {
            return Err(ConfigError::Invalid(
                "--cluster-token must be non-empty and on one line".into(),
            ));
        }
        let (client_tls, peer_tls) = (self.client_tls()?, self.peer_tls()?);
        check_schemes(&members, peer_tls.is_some())?;
        Ok(Settings {
            id,
            name,
            cluster_id: cluster_id(&urls, token),
            random_cluster_id: members.len() == 1 && token.is_none(),
            join: self.join,
            promote_within: self.promote_within,
            health_max_lag: self.health_max_lag,
            peer_dial,
            members,
            peer_listen,
            client_listen: SocketAddr::new(self.listen_addr, self.port),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("metcd-{id}"))),
            engine: self.engine,
            engine_options: EngineOptions {
                btree_cache_bytes: (self.btree_cache_mb << 20) as usize,
            },
            auto_compaction: AutoCompaction::parse(
                self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )?,
            snapshot_count: self.snapshot_count,
            catch_up_entries: self.snapshot_count.min(5_000),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_request_bytes: self.max_request_bytes,
            max_key_bytes: self.max_key_bytes,
            tick: Duration::from_millis(self.heartbeat_ms),
            election_ticks: (self.election_ms / self.heartbeat_ms) as usize,
            watch_progress_notify: Duration::from_millis(self.watch_progress_notify_ms.max(1)),
            quota_backend_bytes: self.quota_backend_bytes,
            client_tls,
            peer_tls,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
            auth_protect_metrics: self.auth_protect_metrics,
        })
    }

    /// The client port's TLS flags, checked for completeness (not yet loaded).
    fn client_tls(&self) -> Result<Option<crate::tls::ClientPortTls>, ConfigError> {
        let (cert, key) = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) => {
                if self.trusted_ca_file.is_some() || self.client_cert_auth {
                    return Err(ConfigError::Invalid(
                        "--trusted-ca-file and --client-cert-auth need TLS on the client port: give --cert-file and --key-file".into(),
                    ));
                }
                return Ok(None);
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "--cert-file and --key-file go together".into(),
                ));
            }
        };
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err(ConfigError::Invalid(
                "--client-cert-auth needs --trusted-ca-file (the CA client certificates must chain to)".into(),
            ));
        }
        Ok(Some(crate::tls::ClientPortTls {
            files: crate::tls::CertFiles {
                cert,
                key,
                ca: self.trusted_ca_file.clone(),
            },
            require_client_cert: self.client_cert_auth,
        }))
    }

    /// The peer TLS flags: all three files or none.
    fn peer_tls(&self) -> Result<Option<crate::tls::PeerTls>, ConfigError> {
        match (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(crate::tls::PeerTls {
                files: crate::tls::CertFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(ca.clone()),
                },
                allowed_cn: self.peer_allowed_cn.clone(),
                allowed_hostname: self.peer_allowed_hostname.clone(),
                client_ca: self.trusted_ca_file.clone(),
                shared_ca_ok: self.insecure_peer_shared_ca,
            })),
            (None, None, None) => {
                if self.peer_allowed_cn.is_some()
                    || self.peer_allowed_hostname.is_some()
                    || self.insecure_peer_shared_ca
                {
                    return Err(ConfigError::Invalid(
                        "--peer-allowed-cn, --peer-allowed-hostname and --insecure-peer-shared-ca need peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file)".into(),
                    ));
                }
                Ok(None)
            }
            _ => Err(ConfigError::Invalid(
                "peer TLS needs all of --peer-cert-file, --peer-key-file and --peer-trusted-ca-file (peers always authenticate each other)".into(),
            )),
        }
    }

    /// The numeric flags' bounds.
    fn check_numbers(&self) -> Result<(), ConfigError> {
        if self.heartbeat_ms == 0 || self.election_ms < 2 * self.heartbeat_ms {
            return Err(ConfigError::Invalid(
                "--election-ms must be at least twice --heartbeat-ms (> 0)".into(),
            ));
        }
        if self.snapshot_count == 0 || self.request_timeout_ms == 0 || self.max_key_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--snapshot-count, --request-timeout-ms and --max-key-bytes must be positive"
                    .into(),
            ));
        }
        // redb wants at least a few pages; a cache past 1 TiB is a typo.
        if !(1..=1 << 20).contains(&self.btree_cache_mb) {
            return Err(ConfigError::Invalid(
                "--btree-cache-mb must be between 1 and 1048576".into(),
            ));
        }
        Ok(())
    }
}

/// Peer URLs must all be https:// with peer TLS and all http:// without: a cluster cannot
/// mix plaintext and TLS members.
pub fn check_schemes(members: &[Member], peer_tls: bool) -> Result<(), ConfigError> {
    let want = if peer_tls { "https://" } else { "http://" };
    match members.iter().find(|m| !m.url.starts_with(want)) {
        None => Ok(()),
        Some(m) if peer_tls => Err(ConfigError::Invalid(format!(
            "peer TLS is on (--peer-cert-file), so every peer URL must be https://; {} is not (plaintext and TLS members cannot be mixed)",
            m.url
        ))),
        Some(m) => Err(ConfigError::Invalid(format!(
            "{} is https://, but this member has no peer TLS: give --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
            m.url
        ))),
    }
}

/// A new member's peer URL, normalized, with the scheme this cluster's peer TLS requires.
pub fn parse_member_url(url: &str, peer_tls: bool) -> Result<String, ConfigError> {
    let (url, authority) = parse_url(url)?;
    let member = Member {
        id: 0,
        url: url.clone(),
        authority,
    };
    check_schemes(std::slice::from_ref(&member), peer_tls)?;
    Ok(url)
}

/// `--peer-dial ID=HOST:PORT` entries: where to dial a member instead of its peer URL.
fn parse_peer_dial(
    entries: &[String],
) -> Result<std::collections::HashMap<u64, String>, ConfigError> {
    let mut peer_dial = std::collections::HashMap::new();
    for entry in entries {
        let parsed = entry.split_once('=').and_then(|(id, addr)| {
            let id = id.trim().parse::<u64>().ok()?;
            let (_, authority) = parse_url(&format!("http://{}", addr.trim())).ok()?;
            Some((id, authority))
        });
        let (id, authority) = parsed.ok_or_else(|| {
            ConfigError::Invalid(format!("--peer-dial {entry:?}: expected ID=HOST:PORT"))
        })?;
        peer_dial.insert(id, authority);
    }
    Ok(peer_dial)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        Config::parse_from(std::iter::once("metcd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_a_single_member_on_3379() {
        let s = cfg(&[]).validate().unwrap();
        assert_eq!(
            (s.id, s.members.len(), s.client_listen.port()),
            (1, 1, 3379)
        );
        assert_eq!(s.data_dir, PathBuf::from("metcd-1"));
        assert_eq!(s.election_ticks, 10);
    }

    #[test]
    fn tls_flags_come_in_sets_and_urls_follow_peer_tls() {
        let peer = [
            "--peer-cert-file",
            "c.pem",
            "--peer-key-file",
            "k.pem",
            "--peer-trusted-ca-file",
            "ca.pem",
        ];
        let with = |extra: &[&str]| cfg(&[&peer[..], extra].concat()).validate();
        let https = "https://127.0.0.1:1,https://127.0.0.1:2";
        let s = with(&["--cluster", https]).unwrap();
        assert!(s.peer_tls.is_some() && s.client_tls.is_none());
        assert!(s.members.iter().all(|m| m.url.starts_with("https://")));
        let e = with(&["--cluster", "https://127.0.0.1:1,http://127.0.0.1:2"]).unwrap_err();
        assert!(e.to_string().contains("cannot be mixed"), "{e}");
        let e = cfg(&["--cluster", https]).validate().unwrap_err();
        assert!(e.to_string().contains("no peer TLS"), "{e}");
        let e = cfg(&["--peer-cert-file", "c.pem", "--cluster", https]).validate();
        assert!(e.unwrap_err().to_string().contains("all of"));
        let e = cfg(&["--peer-allowed-cn", "m1"]).validate().unwrap_err();
        assert!(e.to_string().contains("need peer TLS"), "{e}");
        assert!(cfg(&["--cert-file", "c.pem"]).validate().is_err());
        assert!(cfg(&["--client-cert-auth"]).validate().is_err());
        let client = ["--cert-file", "c.pem", "--key-file", "k.pem"];
        assert!(
            cfg(&[&client[..], &["--client-cert-auth"]].concat())
                .validate()
                .is_err()
        );
        let s = cfg(&client).validate().unwrap();
        assert_eq!(s.client_url(), "https://127.0.0.1:3379");
        let both = [
            &client[..],
            &["--trusted-ca-file", "ca.pem", "--client-cert-auth"],
        ]
        .concat();
        assert!(
            cfg(&both)
                .validate()
                .unwrap()
                .client_tls
                .unwrap()
                .require_client_cert
        );
        assert_eq!(authority_of("https://h:1"), "h:1");
        assert_eq!(authority_of("http://h:1"), "h:1");
    }

    #[test]
    fn bad_flags_are_named() {
        let three = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3";
        let e = cfg(&["--id", "4", "--cluster", three])
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("--id 4"));
        assert!(cfg(&["--id", "0"]).validate().is_err());
        for bad in [
            "notaurl",
            "http://",
            "http://h",
            "ftp://h:1",
            "http://h:99999",
            "http://h:1/x",
        ] {
            assert!(
                matches!(
                    cfg(&["--cluster", bad]).validate(),
                    Err(ConfigError::BadUrl { .. })
                ),
                "{bad}"
            );
        }
        let dup = "http://127.0.0.1:1,http://127.0.0.1:1";
        assert!(matches!(
            cfg(&["--cluster", dup]).validate(),
            Err(ConfigError::DuplicateUrl(_))
        ));
    }

    #[test]
    fn btree_cache_flag() {
        let default = cfg(&[]).validate().unwrap().engine_options;
        assert_eq!(default, EngineOptions::default());
        assert_eq!(default.btree_cache_bytes, 256 << 20);
        let s = cfg(&["--btree-cache-mb", "64"]).validate().unwrap();
        assert_eq!(s.engine_options.btree_cache_bytes, 64 << 20);
        let e = cfg(&["--btree-cache-mb", "0"]).validate().unwrap_err();
        assert!(e.to_string().contains("--btree-cache-mb"), "{e}");
    }

    /// etcd's --initial-cluster form: ids by position, --name picks the entry.
    #[test]
    fn named_members() {
        let list = "a=http://127.0.0.1:1,b=http://127.0.0.1:2,c=http://127.0.0.1:3";
        let s = cfg(&["--name", "b", "--cluster", list]).validate().unwrap();
        assert_eq!((s.id, s.name.as_str()), (2, "b"));
        assert_eq!(s.peer_listen.port(), 2);
        let s = cfg(&["--id", "3", "--cluster", list]).validate().unwrap();
        assert_eq!((s.id, s.name.as_str()), (3, "c"));
        let s = cfg(&[
            "--id",
            "2",
            "--cluster",
            "http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .validate()
        .unwrap();
        assert_eq!(s.name, "metcd-2");
        for bad in [
            &["--name", "z", "--cluster", list][..],
            &["--name", "a", "--id", "2", "--cluster", list],
            &["--cluster", "a=http://127.0.0.1:1,a=http://127.0.0.1:2"],
            &["--name", "tab\there"],
        ] {
            assert!(
                matches!(cfg(bad).validate(), Err(ConfigError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn explicit_ids() {
        let list = "1=http://127.0.0.1:1,3=http://127.0.0.1:3,7=http://127.0.0.1:7";
        let s = cfg(&["--id", "7", "--cluster", list, "--join"])
            .validate()
            .unwrap();
        assert_eq!(
            s.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![1, 3, 7]
        );
        assert_eq!(s.peer_listen.port(), 7);
        assert!(s.join);
        assert!(matches!(
            cfg(&["--id", "2", "--cluster", list]).validate(),
            Err(ConfigError::UnknownId(2))
        ));
        for bad in [
            "1=http://127.0.0.1:1,http://127.0.0.1:2",
            "0=http://127.0.0.1:1",
            "1=http://127.0.0.1:1,x=http://127.0.0.1:2",
        ] {
            assert!(
                matches!(
                    cfg(&["--cluster", bad]).validate(),
                    Err(ConfigError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            cfg(&["--cluster", "1=http://127.0.0.1:1,1=http://127.0.0.1:2"]).validate(),
            Err(ConfigError::DuplicateId(1))
        ));
    }

    #[test]
    fn auto_compaction_flags() {
        let auto = |args: &[&str]| cfg(args).validate().map(|s| s.auto_compaction);
        let h = |n| AutoCompaction::Period(Duration::from_secs(n));
        assert_eq!(auto(&[]).unwrap(), AutoCompaction::Revisions(100_000));
        let periodic = |r| {
            auto(&[
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention",
                r,
            ])
        };
        assert_eq!(periodic("2").unwrap(), h(7200));
        assert_eq!(periodic("1h").unwrap(), h(3600));
        assert_eq!(periodic("30m").unwrap(), h(1800));
        assert_eq!(periodic("90s").unwrap(), h(90));
        assert_eq!(periodic("0").unwrap(), AutoCompaction::Off);
        assert_eq!(
            auto(&["--auto-compaction-retention", "0"]).unwrap(),
            AutoCompaction::Off
        );
        for bad in ["1d", "h", "1x", "1.5h", "99999999999999999999h"] {
            assert!(periodic(bad).is_err(), "{bad}");
        }
        assert!(auto(&["--auto-compaction-retention", "1h"]).is_err());
    }

    #[test]
    fn cluster_id_ignores_order_and_takes_the_token() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(cluster_id(&a, None), cluster_id(&b, None));
        assert_ne!(cluster_id(&a, None), cluster_id(&a[..1], None));
        assert_eq!(cluster_id(&a, Some("t")), cluster_id(&b, Some("t")));
        assert_ne!(cluster_id(&a, Some("t")), cluster_id(&a, None));
        assert_ne!(cluster_id(&a, Some("t")), cluster_id(&a, Some("u")));
        // What earlier versions computed, so existing clusters keep their id.
        assert_eq!(cluster_id(&a, None), 0xeade_7fd2_2692_f0af);
    }

    #[test]
    fn a_lone_founder_without_a_token_gets_a_random_cluster_id() {
        assert!(cfg(&[]).validate().unwrap().random_cluster_id);
        let token = cfg(&["--cluster-token", "prod"]).validate().unwrap();
        assert!(!token.random_cluster_id);
        let three = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3";
        assert!(
            !cfg(&["--cluster", three])
                .validate()
                .unwrap()
                .random_cluster_id
        );
        assert!(cfg(&["--cluster-token", ""]).validate().is_err());
    }
}
