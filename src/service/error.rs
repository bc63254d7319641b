//! Why the service refuses a request, in protocol-neutral terms: each face maps a refusal to
//! its own form once (HTTP: `api::http::error`, a status code and a one-line body; gRPC:
//! `api::grpc`, etcd's codes and messages).

use crate::raft::RequestError;
use crate::raft::members::AdminError;
use crate::store::{Refusal, RevisionError, StoreError};

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Auth is on and the request carries no credentials (etcd: "user name is empty").
    #[error("authentication is enabled: credentials are required")]
    NoCredentials,
    #[error("invalid auth token")]
    InvalidToken,
    /// The token predates a change to users or roles.
    #[error("revision of auth store is old")]
    OldRevision,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("too many failed logins for this user; retry in {0} s")]
    TooManyAttempts(u64),
    #[error("permission denied")]
    PermissionDenied,
    #[error("authentication is not enabled")]
    NotEnabled,
    #[error("{0}")]
    Internal(String),
}

impl From<crate::raft::member_auth::AuthDenial> for Denied {
    fn from(d: crate::raft::member_auth::AuthDenial) -> Self {
        use crate::raft::member_auth::AuthDenial as A;
        match d {
            A::NoCaller => Denied::NoCredentials,
            A::NotRoot => Denied::PermissionDenied,
            A::OldRevision => Denied::OldRevision,
        }
    }
}

/// A request refused as malformed, before anything is proposed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// etcd: "key is not provided".
    #[error("empty key")]
    EmptyKey,
    /// etcd's transaction rules.
    #[error("{0}")]
    Txn(#[from] crate::store::txn::TxnError),
    #[error("ttl {0} exceeds {max} seconds", max = crate::store::lease::MAX_TTL)]
    LeaseTtl(u64),
    #[error("{0}")]
    Other(String),
}

/// Why a lock or election call fails (etcd's messages, from its concurrency package).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Coordination {
    /// The caller's campaign key is gone or is not the one named (Proclaim).
    #[error("election: not leader")]
    NotLeader,
    /// Nobody campaigns on the election (Leader).
    #[error("election: no leader")]
    NoLeader,
    /// Proclaim or Resign without the leader key Campaign answered.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// The waiter's own key was deleted while it waited (its lease ended): it never held.
    #[error("mutex: session is expired")]
    SessionExpired,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Coordination(#[from] Coordination),
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// A state that should not occur (a bug, not the caller's fault).
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("key not found")]
    NotFound,
    #[error("{0}")]
    NoSuchPath(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("method {0} not allowed; allowed: {1}")]
    MethodNotAllowed(String, &'static str),
    /// The write's precondition did not hold; the key's mod revision then (0: absent).
    #[error("precondition failed: {}", describe_current(*.0))]
    PreconditionFailed(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(#[from] RequestError),
    #[error("engine failure: {0}")]
    Engine(StoreError),
    /// A read at a compacted (410) or future (400) revision.
    #[error("{0}")]
    Revision(RevisionError),
    #[error("requested lease not found: {0}")]
    LeaseNotFound(u64),
    #[error("{0}")]
    Admin(#[from] AdminError),
    /// A write that adds data while a space alarm is raised (or that would pass the quota).
    #[error(
        "database space exceeded: a NOSPACE alarm is raised; free space (delete, compact) and disarm it (DELETE /_alarms)"
    )]
    NoSpace,
    /// Auth refused the request: 401 without (valid) credentials, 403 without permission.
    #[error("{0}")]
    Denied(#[from] Denied),
    /// An auth change refused when applied (etcd's reasons).
    #[error("{0}")]
    AuthRefused(crate::store::auth::AuthRefusal),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Revision(e) => Error::Revision(e),
            Refusal::LeaseNotFound(id) => Error::LeaseNotFound(id),
            Refusal::LeaseExists(_) => Error::Conflict(r.to_string()),
            Refusal::KeyNotFound => Error::NotFound,
            Refusal::NoSpace => Error::NoSpace,
            Refusal::Auth(r) => Error::AuthRefused(r),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Revision(r) => Error::Revision(r),
            e => Error::Engine(e),
        }
    }
}

fn describe_current(mod_revision: u64) -> String {
    match mod_revision {
        0 => "the key does not exist".into(),
        rev => format!("the key's mod revision is {rev} (ETag \"{rev}\")"),
    }
}
