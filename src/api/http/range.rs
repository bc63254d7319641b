//! Ordered listing: `GET /<prefix>?prefix=true` and `GET /<start>?end=<end>`, with `limit`.
//!
//! Answer (JSON): `{"revision": R, "count": n, "more": bool, "kvs": [{"key", "value",
//! "create_revision", "mod_revision", "version", "lease"}]}`, keys in byte order, `lease` only
//! when set; `revision` (also in `X-Metcd-Revision`) is the store revision of the state read,
//! and `?revision=N` lists the store as of revision N. With
//! `encoding=base64` keys and values are base64; otherwise they are strings, and an item
//! whose key or value is not UTF-8 carries `key_base64` / `value_base64` instead.

use axum::Json;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::query::{Encoding, Query};
use crate::service::Service;
use crate::service::access::Caller;
use crate::service::kv::RangeRequest;
use crate::store::KeyValue;
use crate::store::range::KeyRange;
use crate::store::range::prefix_end;

/// Used when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 10_000;

pub fn field(item: &mut Map<String, Value>, name: &str, bytes: Vec<u8>, encoding: Encoding) {
    let b64 = |b: &[u8]| Value::String(base64::engine::general_purpose::STANDARD.encode(b));
    match (encoding, String::from_utf8(bytes)) {
        (Encoding::Utf8, Ok(s)) => {
            item.insert(name.into(), Value::String(s));
        }
        (Encoding::Utf8, Err(e)) => {
            item.insert(format!("{name}_base64"), b64(e.as_bytes()));
        }
        (Encoding::Base64, Ok(s)) => {
            item.insert(name.into(), b64(s.as_bytes()));
        }
        (Encoding::Base64, Err(e)) => {
            item.insert(name.into(), b64(e.as_bytes()));
        }
    }
}

pub fn to_json(kv: KeyValue, encoding: Encoding) -> Value {
    let mut item = Map::new();
    field(&mut item, "key", kv.key, encoding);
    field(&mut item, "value", kv.value, encoding);
    item.insert("create_revision".into(), kv.create_revision.into());
    item.insert("mod_revision".into(), kv.mod_revision.into());
    item.insert("version".into(), kv.version.into());
    if kv.lease != 0 {
        item.insert("lease".into(), kv.lease.into());
    }
    Value::Object(item)
}

/// The end of the range a query names from `start` (`None`: to the last key).
pub fn end_of(start: &[u8], q: &Query) -> Option<Vec<u8>> {
    match (&q.end, q.prefix) {
        (Some(e), _) if e.is_empty() => None,
        (Some(e), _) => Some(e.clone()),
        (None, true) => prefix_end(start),
        (None, false) => None,
    }
}

/// Lists the keys of `range`, after the query's read barrier.
pub async fn list(
    state: &Service,
    caller: &Caller,
    range: KeyRange,
    q: &Query,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let req = RangeRequest {
        range,
        revision: q.revision,
        limit: Some(limit.saturating_add(1)),
        count_all: false,
        barrier: q.barrier(),
    };
    let read = state.range(caller, req).await?;
    let mut kvs = read.kvs;
    let more = kvs.len() > limit;
    kvs.truncate(limit);
    let items: Vec<Value> = kvs.into_iter().map(|kv| to_json(kv, q.encoding)).collect();
    let body =
        json!({ "revision": read.revision, "count": items.len(), "more": more, "kvs": items });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        super::headers::REVISION_HEADER,
        super::headers::header_value(&read.revision.to_string()),
    );
    Ok(resp)
}
