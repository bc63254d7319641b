//! metcd: a small etcd-like key-value store.
//!
//! The seed article's architecture, one module per box:
//!
//! ```text
//! api      HTTP/1.x client API (keys, /_members, /_leader, /_status, /_health, /_metrics),
//!          and etcd's v3 gRPC API on the same port (api/grpc)
//!   |  proposals, read barriers (NodeHandle)
//! raft     node: the one owner of the RawNode and its Ready loop (concerns in node/)
//!          storage: the durable log (raft-engine); snapshot: snapshot files
//!          members: replicated membership, and the rules for changing it
//!   |  messages and snapshots to and from other members
//! peer     transport + api: streams between members; client: other peer calls
//!   |  committed entries, in order, one batch per Ready
//! store    the state machine: etcd's data model (revisions, history, txn, lease, auth, watch)
//!   |  ordered byte maps
//! storage  the engines behind one object-safe trait (memory, btree, lsm)
//! ```
//! [`startup`] decides what a data dir makes a member (bootstrap, join, restart, recovery);
//! [`server`] wires the parts together; [`config`] is the only reader of flags; [`metrics`] is the
//! Prometheus registry; [`local_cluster`] runs a 3-member cluster for trying metcd out;
//! [`backup`] writes backups and restores them into new clusters.
//! docs/design.md maps every file to the question it answers.

/// A fault injected for tests: true where the named fail point is configured to `return`
/// (`--features failpoints`, `FAILPOINTS=<name>=return`, with the `fail` crate's counts);
/// always false without the feature.
macro_rules! fault_injected {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let hit = fail::eval($name, |_| ()).is_some();
        #[cfg(not(feature = "failpoints"))]
        let hit = false;
        hit
    }};
}

pub mod api;
pub mod backup;
pub mod codec;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod golden;
pub mod local_cluster;
pub mod metrics;
pub mod peer;
pub mod raft;
pub mod server;
pub mod service;
pub mod startup;
pub mod storage;
pub mod store;
pub mod tls;
pub mod version;

pub use error::{Error, Result};
