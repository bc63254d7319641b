//! Why a request to the raft node did not succeed, and the apply backlog that refuses writes.

/// Why a request to the node did not succeed. Each maps to a 503 with its own message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("no leader: the request was not applied; retry later")]
    NoLeader,
    #[error("leadership is being handed over: the request was not applied; retry")]
    Transferring,
    #[error("the leader was just elected and is still applying its log; retry")]
    LeaderCatchingUp,
    #[error(
        "leadership changed while the write was in flight: it may or may not have been applied"
    )]
    LeaderChanged,
    #[error("leadership changed before the read could be confirmed; retry")]
    ReadAborted,
    #[error("timed out waiting for the write to commit: it may or may not have been applied")]
    WriteTimeout,
    #[error("timed out waiting for a leader to confirm the read")]
    ReadTimeout,
    #[error("timed out waiting for the raft loop")]
    Timeout,
    #[error(
        "timed out after {waited_ms} ms waiting for revision {want}; this member has applied revision {have}"
    )]
    RevisionTimeout {
        want: u64,
        have: u64,
        waited_ms: u64,
    },
    #[error("timed out waiting for leadership to move")]
    TransferTimeout,
    #[error("{0}")]
    Forward(String),
    #[error("member stopped: {0}")]
    Stopped(String),
    /// Committed entries wait to be applied here, or the leader holds too many uncommitted
    /// ones: the write was refused at once rather than queued (etcd's "too many requests").
    #[error("too many requests: {0}; the write was not applied, retry shortly")]
    TooManyRequests(String),
    /// The write's entry was committed but could not be applied (it does not decode on this
    /// member); every member applied it as a no-op.
    #[error("the write was committed but could not be applied ({0}); it had no effect")]
    Skipped(String),
    /// The cluster version does not allow the request yet (`crate::version::Feature`).
    #[error("{0}")]
    ClusterVersion(String),
}

/// Committed entries this member may have waiting to be applied before it refuses new
/// writes with 429 (etcd's maxGapBetweenApplyAndCommitIndex).
pub const MAX_APPLY_BACKLOG: u64 = 5_000;

/// The 429 a write gets while `backlog` committed entries wait to be applied.
pub fn backlog_error(backlog: u64) -> RequestError {
    RequestError::TooManyRequests(format!(
        "{backlog} committed entries are waiting to be applied on this member (limit {MAX_APPLY_BACKLOG})"
    ))
}
