//! Client-facing errors: each maps to one status code and a one-line text body.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // A membership change auth refused answers as any request auth refuses.
        if let ApiError::Admin(AdminError::Denied(d)) = self {
            return ApiError::Denied(d.into()).into_response();
        }
        let mut resp = (self.status(), format!("{self}\n")).into_response();
        self.add_headers(resp.headers_mut());
        resp
    }
}

impl ApiError {
    /// The HTTP status this error answers with.
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::NoSuchPath(_) | ApiError::LeaseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Revision(RevisionError::Compacted { .. }) => StatusCode::GONE,
            ApiError::Revision(RevisionError::Future { .. }) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(RequestError::TooManyRequests(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(RequestError::Skipped(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(RequestError::ClusterVersion(_)) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Admin(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Denied(d) => {
                use Denied as D;
                match d {
                    D::NoCredentials | D::InvalidToken | D::OldRevision | D::AuthFailed => {
                        StatusCode::UNAUTHORIZED
                    }
                    D::PermissionDenied => StatusCode::FORBIDDEN,
                    D::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
                    D::NotEnabled => StatusCode::CONFLICT,
                    D::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
            ApiError::AuthRefused(r) => {
                use crate::store::auth::AuthRefusal as R;
                match r {
                    R::UserNotFound | R::RoleNotFound => StatusCode::NOT_FOUND,
                    R::UserEmpty | R::RoleEmpty | R::PermissionNotGiven | R::InvalidAuthMgmt => {
                        StatusCode::BAD_REQUEST
                    }
                    _ => StatusCode::CONFLICT,
                }
            }
        }
    }

    /// The headers that come with this error: when to retry, how to log in, what is allowed,
    /// the compacted revision, the current ETag.
    fn add_headers(&self, headers: &mut header::HeaderMap) {
        match *self {
            ApiError::Unavailable(RequestError::TooManyRequests(_)) => {
                // Applying 5,000 entries takes well under a second on these engines.
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            ApiError::Denied(Denied::TooManyAttempts(secs)) => {
                headers.insert(
                    header::RETRY_AFTER,
                    super::headers::header_value(&secs.to_string()),
                );
            }
            ApiError::Denied(
                Denied::NoCredentials | Denied::InvalidToken | Denied::OldRevision,
            ) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Basic realm=\"metcd\", Bearer"),
                );
            }
            ApiError::MethodNotAllowed(_, allowed) => {
                headers.insert(header::ALLOW, header::HeaderValue::from_static(allowed));
            }
            ApiError::Revision(RevisionError::Compacted {
                compact_revision, ..
            }) => {
                headers.insert(
                    super::headers::COMPACT_REVISION_HEADER,
                    super::headers::header_value(&compact_revision.to_string()),
                );
            }
            ApiError::PreconditionFailed(rev) if rev > 0 => {
                headers.insert(
                    header::ETAG,
                    super::headers::header_value(&format!("\"{rev}\"")),
                );
            }
            _ => {}
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Revision(e) => ApiError::Revision(e),
            Refusal::LeaseNotFound(id) => ApiError::LeaseNotFound(id),
            Refusal::LeaseExists(_) => ApiError::Conflict(r.to_string()),
            Refusal::KeyNotFound => ApiError::NotFound,
            Refusal::NoSpace => ApiError::NoSpace,
            Refusal::Auth(r) => ApiError::AuthRefused(r),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Revision(r) => ApiError::Revision(r),
            e => ApiError::Engine(e),
        }
    }
}

fn describe_current(mod_revision: u64) -> String {
    match mod_revision {
        0 => "the key does not exist".into(),
        rev => format!("the key's mod revision is {rev} (ETag \"{rev}\")"),
    }
}
