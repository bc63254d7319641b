//! Client-facing errors: each maps to one status code and a one-line text body.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::engine::EngineError;
use crate::raft::RequestError;

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
    #[error("{0}")]
    Unavailable(#[from] RequestError),
    #[error("engine failure: {0}")]
    Engine(#[from] EngineError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound | ApiError::NoSuchPath(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::Engine(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut resp = (status, format!("{self}\n")).into_response();
        if let ApiError::MethodNotAllowed(_, allowed) = self {
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
        }
        resp
    }
}
