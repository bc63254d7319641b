//! Key operations: `GET`, `PUT`, `DELETE` on `/<key>`.
//!
//! A write answers 204 only after its entry is committed by a quorum and applied here, with
//! the resulting store revision in `X-Metcd-Revision`. Reads are linearizable (a ReadIndex
//! barrier) unless `?consistency=serializable`; so are listings (`prefix=true`, `end=`, see
//! [`range`]). Bad input is refused before it is proposed.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use super::query::{Consistency, Query};
use super::{range, AppState};
use crate::engine::Op;

pub const REVISION_HEADER: &str = "x-metcd-revision";

pub async fn handle(
    state: &AppState,
    method: Method,
    raw_key: &str,
    query: Option<&str>,
    body: Body,
) -> Response {
    run(state, method, raw_key, query, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run(
    state: &AppState,
    method: Method,
    raw_key: &str,
    query: Option<&str>,
    body: Body,
) -> Result<Response, ApiError> {
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return Err(ApiError::MethodNotAllowed(
            method.to_string(),
            "GET, HEAD, PUT, DELETE",
        ));
    }
    state.node.check_running()?;
    let key: Vec<u8> = percent_decode_str(raw_key).collect();
    let max_key = state.settings.max_key_bytes;
    if key.len() > max_key {
        return Err(ApiError::TooLarge(format!(
            "key of {} bytes exceeds --max-key-bytes {max_key}",
            key.len()
        )));
    }
    let query = Query::parse(query)?;
    if query.is_range() {
        if !matches!(method, Method::GET | Method::HEAD) {
            return Err(ApiError::BadRequest(
                "prefix= and end= are for GET only".into(),
            ));
        }
        if query.consistency == Consistency::Linearizable {
            state.node.read_index().await?;
        }
        return range::list(state, &key, &query);
    }
    if key.is_empty() {
        return Err(ApiError::BadRequest("empty key".into()));
    }
    let consistency = query.consistency;
    match method {
        Method::PUT => {
            let value = read_value(body, state.settings.max_request_bytes).await?;
            let result = state.node.propose(Op::Put { key, value }).await?;
            Ok(written(result.revision))
        }
        Method::DELETE => {
            let result = state.node.propose(Op::Delete { key }).await?;
            if result.changed {
                Ok(written(result.revision))
            } else {
                Err(ApiError::NotFound)
            }
        }
        _ => {
            if consistency == Consistency::Linearizable {
                state.node.read_index().await?;
            }
            let kv = state.engine.get(&key)?.ok_or(ApiError::NotFound)?;
            let mut resp = (StatusCode::OK, kv.value).into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(
                header::ETAG,
                header_value(&format!("\"{}\"", kv.mod_revision)),
            );
            Ok(resp)
        }
    }
}

async fn read_value(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b.to_vec()),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                Err(ApiError::TooLarge(format!(
                    "value exceeds --max-request-bytes {limit}"
                )))
            } else {
                Err(ApiError::BadRequest(format!(
                    "could not read the request body: {e}"
                )))
            }
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn written(revision: u64) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&revision.to_string()));
    resp
}
