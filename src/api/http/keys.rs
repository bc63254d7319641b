//! Key operations: `GET`, `PUT`, `DELETE` on `/<key>`.
//!
//! A write answers 204 only after its entry is committed by a quorum and applied here, with
//! the resulting store revision in `X-Metcd-Revision`. Reads are linearizable (a ReadIndex
//! barrier) unless `?consistency=serializable`; so are listings (`prefix=true`, `end=`, see
//! [`range`]); `?min_revision=N` reads locally once this member has applied revision N.
//! `?revision=N` reads the store as of revision N: 410 Gone (with
//! `X-Metcd-Compact-Revision`) below the compacted revision, 400 above the current one.
//! Every read answers `X-Metcd-Revision`, the store revision of the state it read; a key
//! read adds the key's `X-Metcd-Create-Revision`, `-Mod-Revision`, `-Version` and `-Lease`.
//! `DELETE /<prefix>?prefix=true` (or `?end=`) deletes a range in one revision and answers
//! `{"deleted": n, "revision": r}`.
//!
//! Compare-and-swap uses HTTP preconditions, decided when the write is applied (so in log
//! order, identically on every member): `If-Match: "<mod_revision>"` (or `*`: the key exists)
//! and `If-None-Match: *` (the key does not exist). A failed precondition answers 412 with
//! the key's current ETag, and changes nothing. Bad input is refused before it is proposed.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;

use super::body::read_value;
use super::error::ApiError;
use super::headers::{REVISION_HEADER, header_value};
use super::query::Query;
use super::range;
use crate::service::Service;
use crate::service::access::Caller;
use crate::service::error::Invalid;
use crate::service::kv::{DeleteOutcome, DeleteRequest, PutOutcome, PutRequest, RangeRequest};
use crate::store::Cond;
use crate::store::range::KeyRange;

const CREATE_REVISION_HEADER: &str = "x-metcd-create-revision";
const MOD_REVISION_HEADER: &str = "x-metcd-mod-revision";
const VERSION_HEADER: &str = "x-metcd-version";
const LEASE_HEADER: &str = "x-metcd-lease";

/// One key request: the method, the raw (percent-encoded) key, the query string, headers
/// (for preconditions) and body.
pub struct KeyRequest<'a> {
    pub method: Method,
    pub raw_key: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Body,
    /// Who asks (the auth layer resolved it; anyone while auth is off).
    pub caller: &'a Caller,
}

pub async fn handle(state: &Service, req: KeyRequest<'_>) -> Response {
    run(state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run(state: &Service, req: KeyRequest<'_>) -> Result<Response, ApiError> {
    let KeyRequest {
        method,
        raw_key,
        query,
        headers,
        body,
        caller,
    } = req;
    if !matches!(
        method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE
    ) {
        return Err(ApiError::MethodNotAllowed(
            method.to_string(),
            "GET, HEAD, PUT, DELETE",
        ));
    }
    let key = decode_key(raw_key, state.settings.max_key_bytes)?;
    let query = Query::parse(query)?;
    if query.revision.is_some() && !matches!(method, Method::GET | Method::HEAD) {
        return Err(ApiError::BadRequest("revision= is for GET only".into()));
    }
    if query.watch {
        if method != Method::GET {
            return Err(ApiError::BadRequest("watch=true is for GET only".into()));
        }
        return super::watch::start(state, caller, key_range(key, &query), &query, headers);
    }
    if query.is_range() {
        return on_range(
            state,
            caller,
            key_range(key, &query),
            &query,
            &method,
            headers,
        )
        .await;
    }
    if key.is_empty() {
        return Err(ApiError::Invalid(Invalid::EmptyKey));
    }
    let cond = precondition(headers)?;
    match method {
        Method::PUT => {
            let value = read_value(body, state.settings.max_request_bytes).await?;
            put(state, caller, key, value, query.lease.unwrap_or(0), cond).await
        }
        Method::DELETE => delete(state, caller, key, cond).await,
        _ if cond.is_some() => Err(ApiError::BadRequest(
            "If-Match and If-None-Match are for PUT and DELETE".into(),
        )),
        _ => read(state, caller, key, &query).await,
    }
}

/// `PUT /<key>`: 204 with the revision, or 412 if the precondition failed.
async fn put(
    state: &Service,
    caller: &Caller,
    key: Vec<u8>,
    value: Vec<u8>,
    lease: u64,
    cond: Option<Cond>,
) -> Result<Response, ApiError> {
    let put = PutRequest {
        key,
        value,
        lease,
        cond,
        ..PutRequest::default()
    };
    match state.put(caller, put).await? {
        PutOutcome::Put { revision, .. } => Ok(written(revision)),
        PutOutcome::PreconditionFailed { current } => Err(ApiError::PreconditionFailed(current)),
    }
}

/// `DELETE /<key>`: 204 with the revision, 404 if there was no such key, 412 if the
/// precondition failed.
async fn delete(
    state: &Service,
    caller: &Caller,
    key: Vec<u8>,
    cond: Option<Cond>,
) -> Result<Response, ApiError> {
    let delete = DeleteRequest {
        range: KeyRange::key(key),
        prev_kv: false,
        cond,
    };
    match state.delete(caller, delete).await? {
        DeleteOutcome::Deleted { deleted: 0, .. } => Err(ApiError::NotFound),
        DeleteOutcome::Deleted { revision, .. } => Ok(written(revision)),
        DeleteOutcome::PreconditionFailed { current } => Err(ApiError::PreconditionFailed(current)),
    }
}

/// The range a listing's query names from `key` (`prefix=` or `end=`; else the key alone).
fn key_range(key: Vec<u8>, query: &Query) -> KeyRange {
    match query.is_range() {
        true => {
            let end = range::end_of(&key, query);
            KeyRange::between(key, end)
        }
        false => KeyRange::key(key),
    }
}

/// A request for a range of keys (`prefix=` or `end=`): a listing, or a range delete.
async fn on_range(
    state: &Service,
    caller: &Caller,
    range: KeyRange,
    query: &Query,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    match *method {
        Method::GET | Method::HEAD => range::list(state, caller, range, query).await,
        Method::DELETE
            if headers.contains_key(header::IF_MATCH)
                || headers.contains_key(header::IF_NONE_MATCH) =>
        {
            Err(ApiError::BadRequest(
                "If-Match and If-None-Match are for single keys (use /_txn)".into(),
            ))
        }
        Method::DELETE => delete_range(state, caller, range).await,
        _ => Err(ApiError::BadRequest(
            "prefix= and end= are for GET and DELETE".into(),
        )),
    }
}

/// The key a path names: percent-decoded, within `--max-key-bytes`.
fn decode_key(raw_key: &str, max_key: usize) -> Result<Vec<u8>, ApiError> {
    let key: Vec<u8> = percent_decode_str(raw_key).collect();
    if key.len() > max_key {
        return Err(ApiError::TooLarge(format!(
            "key of {} bytes exceeds --max-key-bytes {max_key}",
            key.len()
        )));
    }
    Ok(key)
}

/// `DELETE /<prefix>?prefix=true`: every key in the range, in one revision.
async fn delete_range(
    state: &Service,
    caller: &Caller,
    range: KeyRange,
) -> Result<Response, ApiError> {
    let delete = DeleteRequest {
        range,
        prev_kv: false,
        cond: None,
    };
    let (revision, deleted) = match state.delete(caller, delete).await? {
        DeleteOutcome::Deleted {
            revision, deleted, ..
        } => (revision, deleted),
        DeleteOutcome::PreconditionFailed { .. } => {
            return Err(ApiError::Internal(
                "a delete without a precondition failed one".into(),
            ));
        }
    };
    let body = serde_json::json!({ "deleted": deleted, "revision": revision });
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&revision.to_string()));
    Ok(resp)
}

/// A GET or HEAD of one key: its value, ETag and revisions.
async fn read(
    state: &Service,
    caller: &Caller,
    key: Vec<u8>,
    query: &Query,
) -> Result<Response, ApiError> {
    let get = RangeRequest {
        range: KeyRange::key(key),
        revision: query.revision,
        limit: None,
        count_all: false,
        barrier: query.barrier(),
    };
    let read = state.range(caller, get).await?;
    let revision = header_value(&read.revision.to_string());
    let Some(kv) = read.kvs.into_iter().next() else {
        let mut resp = ApiError::NotFound.into_response();
        resp.headers_mut().insert(REVISION_HEADER, revision);
        return Ok(resp);
    };
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
    h.insert(REVISION_HEADER, revision);
    for (name, n) in [
        (CREATE_REVISION_HEADER, kv.create_revision),
        (MOD_REVISION_HEADER, kv.mod_revision),
        (VERSION_HEADER, kv.version),
        (LEASE_HEADER, kv.lease),
    ] {
        if n != 0 {
            h.insert(name, header_value(&n.to_string()));
        }
    }
    Ok(resp)
}

/// The write's precondition from `If-Match` / `If-None-Match`, if any.
fn precondition(headers: &HeaderMap) -> Result<Option<Cond>, ApiError> {
    let one = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        let mut values = headers.get_all(&name).iter();
        let Some(v) = values.next() else {
            return Ok(None);
        };
        let v = v
            .to_str()
            .map_err(|_| ApiError::BadRequest(format!("{name} is not ASCII")))?
            .trim();
        if values.next().is_some() || v.contains(',') {
            return Err(ApiError::BadRequest(format!(
                "{name}: give exactly one entity tag"
            )));
        }
        Ok(Some(v.to_string()))
    };
    match (one(header::IF_MATCH)?, one(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "use either If-Match or If-None-Match, not both".into(),
        )),
        (Some(tag), None) if tag == "*" => Ok(Some(Cond::Exists)),
        (Some(tag), None) => {
            let rev = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "If-Match {tag}: expected \"<mod_revision>\" (the ETag of a GET) or *"
                    ))
                })?;
            Ok(Some(Cond::ModRevision(rev)))
        }
        (None, Some(tag)) if tag == "*" => Ok(Some(Cond::Absent)),
        (None, Some(tag)) => Err(ApiError::BadRequest(format!(
            "If-None-Match {tag}: only * (create if absent) is supported"
        ))),
        (None, None) => Ok(None),
    }
}

fn written(revision: u64) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&revision.to_string()));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_precondition_header_parses_or_is_refused(
            name in proptest::sample::select(vec!["if-match", "if-none-match"]),
            value in "[ -~]{0,40}",
        ) {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(header::HeaderName::from_static(name), v);
            }
            let _ = precondition(&h);
        }
    }

    #[test]
    fn preconditions() {
        let with = |name: &'static str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::HeaderName::from_static(name),
                HeaderValue::from_str(v).unwrap(),
            );
            precondition(&h)
        };
        assert_eq!(
            with("if-match", "\"7\"").unwrap(),
            Some(Cond::ModRevision(7))
        );
        assert_eq!(with("if-match", "*").unwrap(), Some(Cond::Exists));
        assert_eq!(with("if-none-match", "*").unwrap(), Some(Cond::Absent));
        assert!(with("if-match", "7").is_err());
        assert!(with("if-match", "W/\"7\"").is_err());
        assert!(with("if-none-match", "\"7\"").is_err());
        assert_eq!(precondition(&HeaderMap::new()).unwrap(), None);
    }
}
