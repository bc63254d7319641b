//! The HTTP face of the service's refusals: each maps to one status code, a one-line text
//! body and the headers that help a client act on it.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::raft::RequestError;
use crate::raft::members::AdminError;
use crate::service::error::Coordination;
pub use crate::service::error::{Denied, Error as ApiError};
use crate::store::RevisionError;

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
            ApiError::BadRequest(_) | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotFound | ApiError::NoSuchPath(_) | ApiError::LeaseNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Coordination(c) => match c {
                Coordination::NoLeader => StatusCode::NOT_FOUND,
                Coordination::MissingLeaderKey => StatusCode::BAD_REQUEST,
                Coordination::NotLeader | Coordination::SessionExpired => StatusCode::CONFLICT,
            },
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
