//! Command-line configuration: the one place flags are read and checked.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::engine::EngineKind;

/// metcd: a Raft-replicated key-value store with a curl-friendly HTTP API.
#[derive(Parser, Debug, Clone)]
#[command(name = "metcd", version, about)]
pub struct Config {
    /// This member's 1-based position in --cluster.
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Comma-separated peer URLs of all members; each member serves peer traffic on its own.
    #[arg(long, default_value = "http://127.0.0.1:3380")]
    pub cluster: String,
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
    /// State machine engine: btree (redb, read-heavy), lsm (fjall, write-heavy) or memory.
    #[arg(long, value_enum, default_value = "btree")]
    pub engine: EngineKind,
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
    /// Log filter, e.g. `info` or `metcd=debug,raft=info`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--id {id} is out of range: --cluster lists {n} member(s), ids are 1..={n}")]
    IdOutOfRange { id: u64, n: usize },
    #[error("malformed peer URL {url:?} in --cluster: {why} (expected http://host:port)")]
    BadUrl { url: String, why: String },
    #[error("peer URL {0} appears twice in --cluster")]
    DuplicateUrl(String),
    #[error("{0}")]
    Invalid(String),
}

/// One member of the initial cluster.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: u64,
    /// Normalized `http://host:port`.
    pub url: String,
    /// `host:port`, for connecting and listening.
    pub authority: String,
}

/// The checked, derived settings the server runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub id: u64,
    pub members: Vec<Member>,
    pub cluster_id: u64,
    pub peer_listen: SocketAddr,
    pub client_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub engine: EngineKind,
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for followers that are only a little behind.
    pub catch_up_entries: u64,
    pub request_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_key_bytes: usize,
    pub tick: Duration,
    pub election_ticks: usize,
}

fn parse_url(url: &str) -> Result<(String, String), ConfigError> {
    let bad = |why: &str| ConfigError::BadUrl {
        url: url.to_string(),
        why: why.to_string(),
    };
    let rest = url
        .trim()
        .strip_prefix("http://")
        .ok_or_else(|| bad("scheme must be http://"))?;
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
    Ok((format!("http://{authority}"), authority))
}

/// FNV-1a over the sorted member URLs: the same list gives the same id on every member.
pub fn cluster_id(urls: &[String]) -> u64 {
    let mut sorted: Vec<&str> = urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sorted.join(",").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Config {
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let mut members = Vec::new();
        for (i, raw) in self.cluster.split(',').enumerate() {
            let (url, authority) = parse_url(raw)?;
            if members.iter().any(|m: &Member| m.url == url) {
                return Err(ConfigError::DuplicateUrl(url));
            }
            members.push(Member {
                id: i as u64 + 1,
                url,
                authority,
            });
        }
        let n = members.len();
        if self.id == 0 || self.id > n as u64 {
            return Err(ConfigError::IdOutOfRange { id: self.id, n });
        }
        let me = &members[(self.id - 1) as usize];
        let peer_listen = me
            .authority
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError::BadUrl {
                url: me.url.clone(),
                why: "host does not resolve".into(),
            })?;
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
        let urls: Vec<String> = members.iter().map(|m| m.url.clone()).collect();
        Ok(Settings {
            id: self.id,
            cluster_id: cluster_id(&urls),
            members,
            peer_listen,
            client_listen: SocketAddr::new(self.listen_addr, self.port),
            data_dir: self
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("metcd-{}", self.id))),
            engine: self.engine,
            snapshot_count: self.snapshot_count,
            catch_up_entries: self.snapshot_count.min(5_000),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_request_bytes: self.max_request_bytes,
            max_key_bytes: self.max_key_bytes,
            tick: Duration::from_millis(self.heartbeat_ms),
            election_ticks: (self.election_ms / self.heartbeat_ms) as usize,
        })
    }
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
            "https://h:1",
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
    fn cluster_id_ignores_order() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(cluster_id(&a), cluster_id(&b));
        assert_ne!(cluster_id(&a), cluster_id(&a[..1]));
    }
}
