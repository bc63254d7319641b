//! Leases over HTTP (etcd's Lease service):
//!
//! ```text
//! POST   /_leases                 {"ttl": S, "id": N?} -> {"id", "ttl"}: grant (id drawn at random
//!                                 if not given; 409 if it exists)
//! GET    /_leases                 {"leases": [{"id", "ttl", "remaining"}]}
//! GET    /_leases/<id>            {"id", "ttl", "remaining", "remaining_ms", "keys": [{"key"}]}
//! POST   /_leases/<id>/keepalive  {"id", "ttl"}: renewed for its granted TTL
//! DELETE /_leases/<id>            {"id", "deleted", "revision"}: revoked, its keys deleted in
//!                                 one revision
//! PUT    /<key>?lease=<id>        attaches the key (404 if the lease does not exist)
//! ```
//! `ttl` is the granted TTL in seconds, `remaining` what is left (seconds, rounded up). A TTL
//! below the minimum (1.5 election timeouts, rounded up to a second, as etcd's) is raised to
//! it. Unknown leases answer 404 "requested lease not found". Every change goes through the
//! log; keepalives sent to a follower reach the leader as any write does. Reads are
//! linearizable unless `?consistency=serializable` (or `?min_revision=N`). The rules are the
//! service's ([`crate::service::lease`]), the same for etcd's Lease service.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Service;
use super::body::read_value;
use super::error::ApiError;
use super::headers::{REVISION_HEADER, header_value};
use super::query::Query;
use super::range::field;
use crate::service::access::Caller;
use crate::service::lease::KeepAlive;

type Shared = State<Arc<Service>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    ttl: u64,
    #[serde(default)]
    id: u64,
}

fn lease_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{text:?} is not a lease id")))
}

pub async fn grant(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_value(body, 4096).await?;
    let req: Grant = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"ttl\": seconds, \"id\": optional}}: {e}"
        ))
    })?;
    let granted = state.lease_grant(&caller, req.ttl, req.id).await?;
    Ok(Json(json!({ "id": granted.id, "ttl": granted.ttl })).into_response())
}

pub async fn keep_alive(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = lease_id(&id)?;
    match state.lease_keep_alive(&caller, id).await? {
        KeepAlive::Renewed { ttl, .. } => Ok(Json(json!({ "id": id, "ttl": ttl })).into_response()),
        KeepAlive::NotFound { .. } => Err(ApiError::LeaseNotFound(id)),
    }
}

pub async fn revoke(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = lease_id(&id)?;
    let done = state.lease_revoke(&caller, id).await?;
    let mut resp = Json(json!({ "id": id, "deleted": done.deleted, "revision": done.revision }))
        .into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&done.revision.to_string()));
    Ok(resp)
}

pub async fn show(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = lease_id(&id)?;
    let query = Query::parse(query.as_deref())?;
    let read = state
        .lease_time_to_live(&caller, id, true, query.barrier())
        .await?;
    let lease = read.lease.ok_or(ApiError::LeaseNotFound(id))?;
    let keys: Vec<Value> = lease
        .keys
        .into_iter()
        .map(|k| {
            let mut item = Map::new();
            field(&mut item, "key", k, query.encoding);
            Value::Object(item)
        })
        .collect();
    let body = json!({
        "id": id,
        "ttl": lease.ttl,
        "remaining": lease.remaining_ms.div_ceil(1000),
        "remaining_ms": lease.remaining_ms,
        "keys": keys,
    });
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&read.revision.to_string()));
    Ok(resp)
}

pub async fn list(State(state): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let (revision, leases) = state.lease_list(query.barrier()).await?;
    let leases: Vec<Value> = leases
        .into_iter()
        .map(|(id, ttl, remaining_ms)| {
            json!({ "id": id, "ttl": ttl, "remaining": remaining_ms.div_ceil(1000) })
        })
        .collect();
    let mut resp = Json(json!({ "leases": leases })).into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&revision.to_string()));
    Ok(resp)
}
