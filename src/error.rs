//! Errors that stop a member from starting; each prints as one line naming the problem.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another metcd process")]
    DataDirLocked(PathBuf),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Log(#[from] crate::raft::storage::LogError),
    #[error("{0}")]
    Snapshot(#[from] crate::raft::snapshot::SnapshotError),
    #[error("engine: {0}")]
    Engine(#[from] crate::store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Node(#[from] crate::raft::node::NodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unrecoverable(String),
    #[error("cannot join: {0}")]
    Join(String),
    #[error(
        "member {0} was removed from the cluster; wipe its data dir and add it again with a new id"
    )]
    Removed(u64),
    /// This data dir is not the one the cluster knows under its member id (its data was lost
    /// or replaced), or its log lacks entries it acknowledged.
    #[error("{0}")]
    LostData(String),
    /// A backup that cannot be written or restored.
    #[error("backup: {0}")]
    Backup(String),
}

pub type Result<T> = std::result::Result<T, Error>;
