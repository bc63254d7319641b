//! etcd's v3 gRPC API, on the client port beside the HTTP API: a request is gRPC when its
//! content type is `application/grpc...` (grpc-go clients such as etcdctl speak HTTP/2 with
//! prior knowledge; the port accepts both HTTP/1 and HTTP/2), everything else is the HTTP API.
//!
//! Each service maps etcd's calls onto the same node and store the HTTP API uses, so the two
//! see one state and one revision sequence: [`kv`] (Range, Put, DeleteRange, Txn, Compact),
//! [`watch`], [`lease`], [`cluster`], [`maintenance`], [`auth`] (off until auth exists), and
//! [`lock`] (Lock and Election).
//! Every answer's header carries the cluster id, this member's id, the store revision the
//! answer reflects and this member's raft term. Errors carry etcd's codes and messages
//! ([`status`]), so clients' typed errors work.

mod auth;
mod cluster;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tonic::{Code, Status};

use crate::raft::RequestError;
use crate::raft::members::AdminError;
use crate::service::Error;
use crate::service::Service;
use crate::service::access::{Caller, Credentials, Denied};
use crate::service::error::Invalid;
use crate::store::auth::AuthRefusal;
use crate::store::{Refusal, RevisionError, StoreError};

/// The code generated from `proto/` (etcd's package names, so the paths match its protos).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::etcdserverpb as rpc;

/// The etcd API version `Status` reports: the release whose client-visible features metcd
/// implements (3.4's API, with its fixed watch progress requests), so that clients which gate
/// features on the server version turn on exactly what works.
pub const ETCD_API_VERSION: &str = "3.4.31";

/// What every service holds: the member's shared state.
#[derive(Clone)]
pub struct Grpc {
    state: Arc<Service>,
}

impl Grpc {
    /// A response header at store revision `revision`.
    fn header(&self, revision: u64) -> Option<rpc::ResponseHeader> {
        Some(rpc::ResponseHeader {
            cluster_id: self.state.settings.cluster_id,
            member_id: self.state.settings.id,
            revision: to_i64(revision),
            raft_term: self.state.node.term.load(Relaxed),
        })
    }

    /// A header at the store's current revision.
    fn current_header(&self) -> Option<rpc::ResponseHeader> {
        self.header(self.state.engine.revision())
    }

    /// The client connection a request came on (its address, its certificate's CN).
    fn remote<T>(request: &tonic::Request<T>) -> Option<&crate::tls::Remote> {
        request
            .extensions()
            .get::<axum::extract::ConnectInfo<crate::tls::Remote>>()
            .map(|info| &info.0)
    }

    /// Who a request is from: its `token` metadata (etcd clients send it there), or its
    /// client certificate's CN. Anyone while auth is off.
    async fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        // Auth off (the common case): nothing to look at.
        if !self
            .state
            .access
            .view()
            .map_err(status::denied)?
            .state
            .enabled
        {
            return Ok(Caller::Anyone);
        }
        let remote = Self::remote(request);
        let creds = Credentials {
            token: request
                .metadata()
                .get("token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            password: None,
            cert_cn: remote.and_then(|r| r.common_name.clone()),
            from: remote.map(|r| r.addr.ip()),
        };
        self.state
            .access
            .caller(&creds)
            .await
            .map_err(status::denied)
    }
}

/// The gRPC services as one router, for the client port to hand gRPC requests to.
pub fn router(state: Arc<Service>) -> axum::Router {
    // Requests are bounded as the HTTP API's (etcd: --max-request-bytes, plus framing);
    // answers are not (etcd sends a range of any size).
    let max_in = state.settings.max_request_bytes.saturating_add(64 * 1024);
    let g = Grpc { state };
    macro_rules! service {
        ($server:path) => {
            <$server>::new(g.clone())
                .max_decoding_message_size(max_in)
                .max_encoding_message_size(usize::MAX)
        };
    }
    tonic::service::Routes::new(service!(rpc::kv_server::KvServer<Grpc>))
        .add_service(service!(rpc::watch_server::WatchServer<Grpc>))
        .add_service(service!(rpc::lease_server::LeaseServer<Grpc>))
        .add_service(service!(rpc::cluster_server::ClusterServer<Grpc>))
        .add_service(service!(rpc::maintenance_server::MaintenanceServer<Grpc>))
        .add_service(service!(rpc::auth_server::AuthServer<Grpc>))
        .add_service(service!(pb::v3lockpb::lock_server::LockServer<Grpc>))
        .add_service(service!(
            pb::v3electionpb::election_server::ElectionServer<Grpc>
        ))
        .into_axum_router()
}

/// Whether a request on the client port is gRPC.
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An i64 field from a store number (revisions and ids stay far below `i64::MAX`).
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A store number from an i64 field: negative is 0.
fn from_i64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// etcd's errors, by the messages clients match on.
pub(crate) mod status {
    use tonic::{Code, Status};

    fn etcd(code: Code, what: &str) -> Status {
        Status::new(code, format!("etcdserver: {what}"))
    }

    pub fn empty_key() -> Status {
        etcd(Code::InvalidArgument, "key is not provided")
    }
    pub fn key_not_found() -> Status {
        etcd(Code::InvalidArgument, "key not found")
    }
    pub fn value_provided() -> Status {
        etcd(Code::InvalidArgument, "value is provided")
    }
    pub fn lease_provided() -> Status {
        etcd(Code::InvalidArgument, "lease is provided")
    }
    pub fn too_many_ops() -> Status {
        etcd(Code::InvalidArgument, "too many operations in txn request")
    }
    pub fn duplicate_key() -> Status {
        etcd(Code::InvalidArgument, "duplicate key given in txn request")
    }
    pub fn invalid_sort() -> Status {
        etcd(Code::InvalidArgument, "invalid sort option")
    }
    pub fn compacted() -> Status {
        etcd(
            Code::OutOfRange,
            "mvcc: required revision has been compacted",
        )
    }
    pub fn future_rev() -> Status {
        etcd(
            Code::OutOfRange,
            "mvcc: required revision is a future revision",
        )
    }
    pub fn no_space() -> Status {
        etcd(Code::ResourceExhausted, "mvcc: database space exceeded")
    }
    pub fn lease_not_found() -> Status {
        etcd(Code::NotFound, "requested lease not found")
    }
    pub fn lease_exists() -> Status {
        etcd(Code::FailedPrecondition, "lease already exists")
    }
    pub fn lease_ttl_too_large() -> Status {
        etcd(Code::OutOfRange, "too large lease TTL")
    }
    pub fn request_too_large() -> Status {
        etcd(Code::InvalidArgument, "request is too large")
    }
    pub fn too_many_requests() -> Status {
        etcd(Code::ResourceExhausted, "too many requests")
    }
    pub fn no_leader() -> Status {
        etcd(Code::Unavailable, "no leader")
    }
    pub fn leader_changed() -> Status {
        etcd(Code::Unavailable, "leader changed")
    }
    pub fn stopped() -> Status {
        etcd(Code::Unavailable, "server stopped")
    }
    pub fn timeout() -> Status {
        etcd(Code::Unavailable, "request timed out")
    }
    pub fn member_not_found() -> Status {
        etcd(Code::NotFound, "member not found")
    }
    pub fn member_bad_urls() -> Status {
        etcd(Code::InvalidArgument, "given member URLs are invalid")
    }
    pub fn peer_url_exists() -> Status {
        etcd(Code::FailedPrecondition, "Peer URLs already exists")
    }
    pub fn member_not_learner() -> Status {
        etcd(
            Code::FailedPrecondition,
            "can only promote a learner member",
        )
    }
    pub fn learner_not_ready() -> Status {
        etcd(
            Code::FailedPrecondition,
            "can only promote a learner member which is in sync with leader",
        )
    }
    pub fn bad_leader_transferee() -> Status {
        etcd(Code::FailedPrecondition, "bad leader transferee")
    }
    pub fn not_leader() -> Status {
        etcd(Code::FailedPrecondition, "not leader")
    }
    pub fn auth_not_enabled() -> Status {
        etcd(Code::FailedPrecondition, "authentication is not enabled")
    }

    /// etcd's error for a transaction its rules refuse.
    pub fn txn(e: crate::store::txn::TxnError) -> Status {
        use crate::store::txn::TxnError as E;
        match e {
            E::DuplicateKey => duplicate_key(),
            E::TooManyOps(_) => too_many_ops(),
            E::ValueProvided => value_provided(),
            E::LeaseProvided => lease_provided(),
            E::TooDeep => Status::invalid_argument(format!("etcdserver: {e}")),
        }
    }

    /// etcd's error for a request refused by auth.
    pub fn denied(d: super::Denied) -> Status {
        use super::Denied as D;
        match d {
            D::NoCredentials => etcd(Code::InvalidArgument, "user name is empty"),
            D::InvalidToken => etcd(Code::Unauthenticated, "invalid auth token"),
            D::OldRevision => etcd(Code::InvalidArgument, "revision of auth store is old"),
            D::AuthFailed => etcd(
                Code::InvalidArgument,
                "authentication failed, invalid user ID or password",
            ),
            D::TooManyAttempts(_) => etcd(Code::ResourceExhausted, &d.to_string()),
            D::PermissionDenied => etcd(Code::PermissionDenied, "permission denied"),
            D::NotEnabled => auth_not_enabled(),
            D::Internal(e) => Status::unavailable(format!("etcdserver: {e}")),
        }
    }

    /// etcd's error for an auth change refused at apply.
    pub fn auth_refusal(r: super::AuthRefusal) -> Status {
        use super::AuthRefusal as R;
        let code = match r {
            R::UserEmpty
            | R::RoleEmpty
            | R::InvalidAuthMgmt
            | R::PermissionNotGiven
            | R::OldRevision => Code::InvalidArgument,
            _ => Code::FailedPrecondition,
        };
        etcd(code, &r.to_string())
    }
}

fn request_status(e: &RequestError) -> Status {
    match e {
        RequestError::NoLeader => status::no_leader(),
        RequestError::Transferring
        | RequestError::LeaderCatchingUp
        | RequestError::LeaderChanged
        | RequestError::ReadAborted => status::leader_changed(),
        RequestError::WriteTimeout
        | RequestError::ReadTimeout
        | RequestError::Timeout
        | RequestError::RevisionTimeout { .. }
        | RequestError::TransferTimeout => status::timeout(),
        RequestError::Stopped(_) => status::stopped(),
        RequestError::TooManyRequests(_) => status::too_many_requests(),
        RequestError::Forward(msg) => Status::unavailable(msg.clone()),
        RequestError::Skipped(msg) => Status::internal(msg.clone()),
        RequestError::ClusterVersion(msg) => Status::failed_precondition(msg.clone()),
    }
}

fn refusal_status(r: Refusal) -> Status {
    match r {
        Refusal::Revision(e) => revision_status(e),
        Refusal::LeaseNotFound(_) => status::lease_not_found(),
        Refusal::LeaseExists(_) => status::lease_exists(),
        Refusal::KeyNotFound => status::key_not_found(),
        Refusal::NoSpace => status::no_space(),
        Refusal::Auth(r) => status::auth_refusal(r),
    }
}

fn revision_status(e: RevisionError) -> Status {
    match e {
        RevisionError::Compacted { .. } => status::compacted(),
        RevisionError::Future { .. } => status::future_rev(),
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::Unavailable(e) => request_status(&e),
            Error::Revision(e) => revision_status(e),
            Error::LeaseNotFound(_) => status::lease_not_found(),
            Error::Engine(e) => Status::unavailable(format!("etcdserver: {e}")),
            Error::TooLarge(_) => status::request_too_large(),
            Error::Admin(e) => admin_status(e),
            Error::NotFound => status::key_not_found(),
            Error::NoSpace => status::no_space(),
            Error::Denied(d) => status::denied(d),
            Error::AuthRefused(r) => status::auth_refusal(r),
            Error::Invalid(Invalid::EmptyKey) => status::empty_key(),
            Error::Invalid(Invalid::Txn(e)) => status::txn(e),
            Error::Invalid(Invalid::LeaseTtl(_)) => status::lease_ttl_too_large(),
            Error::Internal(e) => Status::internal(format!("etcdserver: {e}")),
            // grpc-go's code for a plain Go error, which these are in etcd.
            Error::Coordination(e) => Status::unknown(e.to_string()),
            other => Status::invalid_argument(other.to_string()),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Error::from(e).into()
    }
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Status {
        request_status(&e)
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        refusal_status(r)
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        admin_status(e)
    }
}

/// Membership and leadership refusals, with etcd's messages where a client matches on them
/// and metcd's reason otherwise.
fn admin_status(e: AdminError) -> Status {
    match e {
        AdminError::Unavailable(e) => request_status(&e),
        AdminError::NotLeader { .. } => status::not_leader(),
        AdminError::NotFound(_) => status::member_not_found(),
        AdminError::BadRequest(msg) => Status::invalid_argument(format!("etcdserver: {msg}")),
        AdminError::Conflict(msg) => Status::failed_precondition(format!("etcdserver: {msg}")),
        AdminError::LeaderMustMove => status::leader_changed(),
        AdminError::Denied(d) => status::denied(d.into()),
        AdminError::Relayed(code, msg) => {
            let code = match code {
                400 => Code::InvalidArgument,
                404 => Code::NotFound,
                409 => Code::FailedPrecondition,
                429 => Code::ResourceExhausted,
                _ => Code::Unavailable,
            };
            Status::new(code, format!("etcdserver: {}", msg.trim()))
        }
    }
}

/// A server stream: what a task sends on `rx`, until it drops its sender.
pub(crate) type Outbound<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn outbound<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<Result<T, Status>>) -> Outbound<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
