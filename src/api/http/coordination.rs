//! Locks and elections over HTTP (etcd's Lock and Election services; the rules are the
//! service's, [`crate::service::lock`] and [`crate::service::election`]):
//!
//! ```text
//! POST   /_lock/<name>?lease=ID       waits until held -> {"key", "lease", "revision"}; the key
//!                                     (<name>/<lease in hex>) exists while the lock is held
//! DELETE /_lock/<key>                 unlock (deletes the key Lock answered) -> {"revision"}
//! POST   /_election/<name>?lease=ID   body: the value; waits until leader ->
//!                                     {"name", "key", "rev", "lease", "revision"}
//! GET    /_election/<name>            the leader -> {"kv": {...}, "revision"}; 404 if none
//! GET    /_election/<name>?watch=true observe: one NDJSON line {"kv", "revision"} for the
//!                                     leader now and at each change
//! PUT    /_election/<name>?lease=ID&rev=N   body: the value; proclaim (409 if not leader)
//! DELETE /_election/<name>?lease=ID&rev=N   resign
//! ```
//! `lease` is optional for Lock and Campaign: without it a lease of 60 s is granted (etcd's
//! session default) and answered. `rev` is the leader key's create revision, as Campaign
//! answered it. A name is the rest of the path, percent-decoded; `encoding=base64` applies to
//! keys and values in answers as elsewhere.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::Service;
use super::body::read_value;
use super::error::ApiError;
use super::query::{Encoding, Query};
use super::range::{field, to_json};
use crate::service::access::Caller;
use crate::service::election::LeaderKey;
use crate::service::lock::{queue_key, queue_of};

type Shared = State<Arc<Service>>;

fn name_of(raw: &str) -> Vec<u8> {
    percent_decode_str(raw).collect()
}

fn leader_json(kv: crate::store::KeyValue, revision: u64, encoding: Encoding) -> Value {
    json!({ "kv": to_json(kv, encoding), "revision": revision })
}

pub async fn lock(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let held = state
        .lock(&caller, &name_of(&name), query.lease.unwrap_or(0))
        .await?;
    let mut body = Map::new();
    field(&mut body, "key", held.key, query.encoding);
    body.insert("lease".into(), held.lease.into());
    body.insert("revision".into(), held.revision.into());
    Ok(Json(Value::Object(body)).into_response())
}

pub async fn unlock(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let revision = state.unlock(&caller, &name_of(&key)).await?;
    Ok(Json(json!({ "revision": revision })).into_response())
}

pub async fn campaign(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let value = read_value(body, state.settings.max_request_bytes).await?;
    let (leader, revision) = state
        .campaign(&caller, &name_of(&name), query.lease.unwrap_or(0), value)
        .await?;
    let mut body = Map::new();
    field(&mut body, "name", leader.name, query.encoding);
    field(&mut body, "key", leader.key, query.encoding);
    body.insert("rev".into(), leader.rev.into());
    body.insert("lease".into(), leader.lease.into());
    body.insert("revision".into(), revision.into());
    Ok(Json(Value::Object(body)).into_response())
}

/// The leader key a proclaim or resign names: `<name>/<lease in hex>` at create revision
/// `rev`.
fn named_leader(name: Vec<u8>, query: &Query) -> Result<LeaderKey, ApiError> {
    let (Some(lease), Some(rev)) = (query.lease, query.rev) else {
        return Err(crate::service::error::Coordination::MissingLeaderKey.into());
    };
    let key = queue_key(&queue_of(&name).0, lease);
    Ok(LeaderKey {
        name,
        key,
        rev,
        lease,
    })
}

pub async fn proclaim(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let leader = named_leader(name_of(&name), &query)?;
    let value = read_value(body, state.settings.max_request_bytes).await?;
    let revision = state.proclaim(&caller, &leader, value).await?;
    Ok(Json(json!({ "revision": revision })).into_response())
}

pub async fn resign(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let leader = named_leader(name_of(&name), &query)?;
    let revision = state.resign(&caller, &leader).await?;
    Ok(Json(json!({ "revision": revision })).into_response())
}

/// The leader, or with `watch=true` a stream of it (Observe).
pub async fn leader(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let name = name_of(&name);
    if !query.watch {
        let (kv, revision) = state.leader(&caller, &name).await?;
        return Ok(Json(leader_json(kv, revision, query.encoding)).into_response());
    }
    let mut observer = state.observe(&caller, &name)?;
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let encoding = query.encoding;
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                next = observer.next() => match next {
                    Ok((kv, revision)) => leader_json(kv, revision, encoding),
                    Err(e) => json!({ "canceled": true, "reason": e.to_string() }),
                },
                () = tx.closed() => return,
            };
            let end = line.get("canceled").is_some();
            let mut bytes = line.to_string().into_bytes();
            bytes.push(b'\n');
            if tx.send(Bytes::from(bytes)).await.is_err() || end {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
