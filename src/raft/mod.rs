//! Consensus: the Raft node's owner loop, its durable log and snapshots (the peer transport
//! that carries its messages is [`crate::peer`]).
//!
//! Everything outside this module talks to the node through a [`NodeHandle`]: requests go into
//! the owner's inbox and are answered on a oneshot channel, always within the request timeout.

/// A crash point for crash-consistency tests: with `--features failpoints` and
/// `FAILPOINTS=<name>=return` (see the `fail` crate for counts), the process aborts here, as
/// abruptly as `kill -9`. Without the feature it compiles to nothing.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            eprintln!("metcd: crash point {} reached; aborting", $name);
            std::process::abort()
        });
    };
}

pub mod command;
mod error;
pub use error::{MAX_APPLY_BACKLOG, RequestError, backlog_error};
pub mod logger;
pub mod member_auth;
pub mod members;
pub mod node;
pub mod reset_check;
pub mod snapshot;
pub mod storage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use raft::eraftpb::Message;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use self::members::{AdminError, Contact, MemberChange, MemberStatus};
use crate::store::{Op, OpResult};

/// What the owner loop reads from its one inbox.
pub enum Input {
    Propose {
        op: Op,
        reply: oneshot::Sender<Result<OpResult, RequestError>>,
    },
    /// Answered with a read index once this member has applied up to it.
    ReadIndex {
        reply: oneshot::Sender<Result<u64, RequestError>>,
    },
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    Status(oneshot::Sender<Result<NodeStatus, RequestError>>),
    /// A digest of the whole state machine at the applied index, taken between two applies.
    Hash(oneshot::Sender<Result<StateHash, RequestError>>),
    /// Decided on the leader; answered once the change is applied here.
    ChangeMembers {
        change: MemberChange,
        /// The client who asked, with auth on.
        by: Option<member_auth::Principal>,
        reply: oneshot::Sender<Result<Vec<MemberStatus>, AdminError>>,
    },
    /// Answered once `to` leads (as seen by this member).
    TransferLeader {
        to: u64,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// On the leader: hand leadership to the most up-to-date voter; answered `true` once
    /// another member leads, `false` at once if this member does not lead or has no one to
    /// hand over to.
    HandOff(oneshot::Sender<Result<bool, AdminError>>),
    /// A peer answered 410 Gone: this member was removed from the cluster.
    Removed,
    /// A peer opened a stream to us, or answered ours, presenting `incarnation`: decide
    /// whether its traffic is accepted (see [`members::contact`]); a first contact is recorded
    /// durably before the answer.
    PeerContact {
        id: u64,
        incarnation: u64,
        reply: oneshot::Sender<Contact>,
    },
    /// A member of this cluster answered with a committed record of another incarnation for
    /// this member id ([`reset_check`]): this data dir is not the one the cluster knows (it lost
    /// its data). The member records that and stops. Never sent on a peer's word alone.
    Reset(String),
    Shutdown,
}

/// A point-in-time view of the node, served as `/_status`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub id: u64,
    /// This member's `--name`.
    pub name: String,
    /// This member's metcd release.
    pub version: &'static str,
    /// The cluster version applied here (what every member may rely on).
    pub cluster_version: String,
    /// This data dir's format (1: readable by 0.1.0).
    pub data_dir_format: u32,
    pub cluster_id: String,
    /// This data dir's incarnation (hex): a random id drawn when it was created.
    pub incarnation: String,
    pub role: &'static str,
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub first_log_index: u64,
    pub last_log_index: u64,
    /// Synced log appends since start (one per Ready that had entries or hard state).
    pub log_syncs: u64,
    pub engine: &'static str,
    pub revision: u64,
    /// Reads below this revision are refused (the last compaction; 0: none).
    pub compact_revision: u64,
    pub keys: u64,
    pub members: Vec<MemberStatus>,
}

/// A digest of the state machine, for checking that members converged: equal digests at the
/// same applied index mean identical keys, values and revisions.
#[derive(Clone, Debug, Serialize)]
pub struct StateHash {
    pub applied_index: u64,
    pub revision: u64,
    pub keys: u64,
    /// FNV-1a (64-bit, hex) over every key, value and per-key revision, in key order.
    pub hash: String,
}

/// The API layer's way into the owner loop.
#[derive(Clone)]
pub struct NodeHandle {
    inbox: mpsc::Sender<Input>,
    timeout: Duration,
    /// The store revision applied on this member, published after every apply.
    revision: watch::Receiver<u64>,
    /// Set once, with the reason, if the owner loop stopped on a fatal error.
    pub failed: Arc<OnceLock<String>>,
    /// Committed entries not yet applied, published by the owner after every Ready.
    pub apply_backlog: Arc<AtomicU64>,
    /// The leader this member knows (0: none), published by the owner when it changes.
    pub leader: Arc<AtomicU64>,
    /// This member's raft term, published by the owner at every Ready.
    pub term: Arc<AtomicU64>,
}

impl NodeHandle {
    pub fn new(
        inbox: mpsc::Sender<Input>,
        timeout: Duration,
        revision: watch::Receiver<u64>,
    ) -> Self {
        NodeHandle {
            inbox,
            timeout,
            revision,
            failed: Arc::new(OnceLock::new()),
            apply_backlog: Arc::new(AtomicU64::new(0)),
            leader: Arc::new(AtomicU64::new(0)),
            term: Arc::new(AtomicU64::new(0)),
        }
    }

    /// With no leader known, waits for one, at most half the request timeout (then the
    /// request is refused "no leader" as before, well within its timeout). As etcd holds a
    /// request during an election rather than refusing it: a client that starts with a new
    /// cluster, or writes across a leader change, is answered once a leader is elected.
    async fn await_leader(&self) {
        let deadline = tokio::time::Instant::now() + self.timeout / 2;
        while self.leader.load(Ordering::Relaxed) == 0
            && self.failed.get().is_none()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most the request timeout) until this member has applied store revision
    /// `want`: a read after it sees every write up to that revision.
    pub async fn wait_revision(&self, want: u64) -> Result<(), RequestError> {
        self.check_running()?;
        let mut rx = self.revision.clone();
        let reached = tokio::time::timeout(self.timeout, async {
            rx.wait_for(|have| *have >= want).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.stopped()),
            Err(_) => Err(RequestError::RevisionTimeout {
                want,
                have: *self.revision.borrow(),
                waited_ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    /// Asks the leader (this member, if it leads) to change the membership for the client
    /// `by` (with auth on). `NotLeader` names the leader to forward to.
    pub async fn change_members(
        &self,
        change: MemberChange,
        by: Option<member_auth::Principal>,
    ) -> Result<Vec<MemberStatus>, AdminError> {
        self.admin_call(
            |reply| Input::ChangeMembers { change, by, reply },
            RequestError::WriteTimeout,
        )
        .await
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<(), AdminError> {
        self.admin_call(
            |reply| Input::TransferLeader { to, reply },
            RequestError::TransferTimeout,
        )
        .await
    }

    /// See [`Input::HandOff`].
    pub async fn hand_off(&self) -> Result<bool, AdminError> {
        self.admin_call(Input::HandOff, RequestError::TransferTimeout)
            .await
    }

    async fn admin_call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, AdminError>>) -> Input,
        on_timeout: RequestError,
    ) -> Result<T, AdminError> {
        if self.failed.get().is_some() {
            return Err(self.stopped().into());
        }
        let (tx, rx) = oneshot::channel();
        self.inbox
            .send(make(tx))
            .map_err(|_| AdminError::from(self.stopped()))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.stopped().into()),
            Err(_) => Err(on_timeout.into()),
        }
    }

    /// Fails once the raft loop has stopped: local state may then lag or differ from the
    /// cluster's, so even serializable reads are refused.
    pub fn check_running(&self) -> Result<(), RequestError> {
        match self.failed.get() {
            Some(_) => Err(self.stopped()),
            None => Ok(()),
        }
    }

    fn stopped(&self) -> RequestError {
        RequestError::Stopped(
            self.failed
                .get()
                .cloned()
                .unwrap_or_else(|| "shutting down".into()),
        )
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, RequestError>>) -> Input,
        on_timeout: RequestError,
    ) -> Result<T, RequestError> {
        if self.failed.get().is_some() {
            return Err(self.stopped());
        }
        let (tx, rx) = oneshot::channel();
        self.inbox.send(make(tx)).map_err(|_| self.stopped())?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(on_timeout),
        }
    }

    /// Proposes `op`; answers once it is committed and applied on this member. Refused at
    /// once (not queued) while this member has too many committed entries to apply.
    pub async fn propose(&self, op: Op) -> Result<OpResult, RequestError> {
        let backlog = self.apply_backlog.load(Ordering::Relaxed);
        if backlog > MAX_APPLY_BACKLOG {
            return Err(backlog_error(backlog));
        }
        self.await_leader().await;
        self.call(
            |reply| Input::Propose { op, reply },
            RequestError::WriteTimeout,
        )
        .await
    }

    /// A linearizable read barrier: returns once local state reflects every write committed
    /// before the call.
    pub async fn read_index(&self) -> Result<u64, RequestError> {
        self.await_leader().await;
        self.call(
            |reply| Input::ReadIndex { reply },
            RequestError::ReadTimeout,
        )
        .await
    }

    /// Asks the owner to decide a peer's contact (see [`Input::PeerContact`]).
    pub async fn peer_contact(&self, id: u64, incarnation: u64) -> Result<Contact, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.send(Input::PeerContact {
            id,
            incarnation,
            reply: tx,
        })?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(_)) => Err(self.stopped()),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    pub async fn status(&self) -> Result<NodeStatus, RequestError> {
        self.call(Input::Status, RequestError::Timeout).await
    }

    pub async fn state_hash(&self) -> Result<StateHash, RequestError> {
        self.call(Input::Hash, RequestError::Timeout).await
    }

    /// Hands a peer message to the owner loop (never blocks).
    pub fn step(&self, msg: Message) -> Result<(), RequestError> {
        self.send(Input::Step(Box::new(msg)))
    }

    pub fn send(&self, input: Input) -> Result<(), RequestError> {
        self.inbox.send(input).map_err(|_| self.stopped())
    }
}
