//! The service: every client operation, with every rule it is subject to, written once for
//! both protocol faces (`api::http`, the HTTP API, and `api::grpc`, etcd's v3 API).
//!
//! An operation takes the caller ([`access::Caller`]) and a typed request and answers a typed
//! outcome or an [`Error`]. The faces only translate: a request from their wire form, an
//! outcome or error into theirs. The rules here, in the order an operation applies them:
//! 1. the member is serving ([`crate::raft::NodeHandle::check_running`]);
//! 2. the request is well formed and within the size limits (`--max-key-bytes`,
//!    `--max-request-bytes`; etcd's transaction rules);
//! 3. the caller may do it ([`access::Caller`]: permissions on every key read or written,
//!    lease permissions, root for administration);
//! 4. a write that adds data passes the quota ([`Service::check_quota`]);
//! 5. a write is proposed bound to the auth revision its checks were made at
//!    ([`access::Caller::guard`]), and refused when applied if users or roles changed;
//! 6. a read waits for its barrier ([`kv::Barrier`]) and is refused afterwards if users or
//!    roles changed meanwhile ([`access::Caller::still_current`]).
//!
//! Overload (too many entries waiting to be applied) is refused by the node itself.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod election;
pub mod error;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod watch;

use std::sync::Arc;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::peer::client::AdminCtx;
use crate::raft::NodeHandle;
use crate::store::KvStore;
pub use error::{Denied, Error};

/// What every operation needs: the member's node, store, settings and auth state.
pub struct Service {
    pub node: NodeHandle,
    pub engine: Arc<KvStore>,
    pub settings: Arc<Settings>,
    pub admin: AdminCtx,
    pub metrics: Arc<Metrics>,
    /// Becomes true when the member stops serving clients: streams (watches) end then, so
    /// draining the client port does not wait for them forever.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// The size of the store's files (engine and snapshots), measured every second, for
    /// `--quota-backend-bytes`.
    pub backend_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Identity and permissions ([`access`]).
    pub access: Arc<access::Access>,
}

impl Service {
    /// etcd's quota check, before a write that adds data is proposed: past the quota, this
    /// member raises its NOSPACE alarm (through the log, so every member then refuses such
    /// writes) and the write is refused.
    pub async fn check_quota(&self) -> Result<(), Error> {
        let quota = self.settings.quota_backend_bytes;
        let size = self
            .backend_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if quota == 0 || size <= quota {
            return Ok(());
        }
        let me = self.settings.id;
        if !self.engine.alarms()?.contains(&me) {
            tracing::warn!(
                size,
                quota,
                "store files past --quota-backend-bytes; raising the NOSPACE alarm"
            );
            let alarm = crate::store::Op::Alarm {
                member: me,
                active: true,
            };
            self.node.propose(alarm).await?;
        }
        Err(Error::NoSpace)
    }
}
