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
//! linearizable unless `?consistency=serializable`.

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
use super::query::{Consistency, Query};
use super::range::field;
use crate::store::Op;

type Shared = State<Arc<Service>>;

/// etcd's largest TTL (9,000,000,000 s).
pub(super) const MAX_TTL: u64 = 9_000_000_000;

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

/// The shortest TTL granted: 1.5 election timeouts, in whole seconds (etcd's minimum).
pub(super) fn min_ttl(state: &Service) -> u64 {
    let election_ms = state.settings.tick.as_millis() as u64 * state.settings.election_ticks as u64;
    (election_ms * 3 / 2).div_ceil(1000).max(1)
}

fn propose_error(result: &crate::store::OpResult) -> Result<(), ApiError> {
    match result.refused {
        Some(r) => Err(r.into()),
        None => Ok(()),
    }
}

/// A lease id drawn at random: a positive int64, as etcd's.
pub(super) fn new_lease_id() -> Result<u64, ApiError> {
    let drawn = crate::raft::storage::random_id()
        .map_err(|e| ApiError::BadRequest(format!("cannot draw a lease id: {e}")))?;
    Ok((drawn >> 1).max(1))
}

pub async fn grant(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    state.node.check_running()?;
    let body = read_value(body, 4096).await?;
    let req: Grant = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "expected {{\"ttl\": seconds, \"id\": optional}}: {e}"
        ))
    })?;
    if req.ttl > MAX_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl {} exceeds {MAX_TTL} seconds",
            req.ttl
        )));
    }
    let ttl = req.ttl.max(min_ttl(&state));
    let id = match req.id {
        0 => new_lease_id()?,
        id if id > i64::MAX as u64 => {
            return Err(ApiError::BadRequest(format!(
                "lease id {id} exceeds {}",
                i64::MAX
            )));
        }
        id => id,
    };
    state.check_quota().await?;
    let result = state
        .node
        .propose(caller.guard(Op::LeaseGrant { id, ttl }))
        .await?;
    propose_error(&result)?;
    Ok(Json(json!({ "id": id, "ttl": ttl })).into_response())
}

pub async fn keep_alive(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.node.check_running()?;
    let id = lease_id(&id)?;
    let result = state
        .node
        .propose(caller.guard(Op::LeaseKeepAlive { id }))
        .await?;
    propose_error(&result)?;
    Ok(Json(json!({ "id": id, "ttl": result.ttl })).into_response())
}

pub async fn revoke(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.node.check_running()?;
    let id = lease_id(&id)?;
    caller.may_revoke(&state.engine, id)?;
    let result = state
        .node
        .propose(caller.guard(Op::LeaseRevoke { id }))
        .await?;
    propose_error(&result)?;
    let mut resp =
        Json(json!({ "id": id, "deleted": result.deleted, "revision": result.revision }))
            .into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&result.revision.to_string()));
    Ok(resp)
}

/// Waits for a ReadIndex round unless the query asks for local state.
async fn barrier(state: &Service, query: Option<&str>) -> Result<Query, ApiError> {
    state.node.check_running()?;
    let query = Query::parse(query)?;
    if query.consistency == Consistency::Linearizable {
        state.node.read_index().await?;
    }
    Ok(query)
}

pub async fn show(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = lease_id(&id)?;
    let query = barrier(&state, query.as_deref()).await?;
    let read = state.engine.lease(id)?;
    let lease = read.value.ok_or(ApiError::LeaseNotFound(id))?;
    // The answer lists the lease's keys: the caller must be allowed to read each (etcd's
    // rule for TimeToLive with keys).
    for key in &lease.keys {
        caller.may(crate::store::auth::Need::Read, key, &[])?;
    }
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
    barrier(&state, query.as_deref()).await?;
    let read = state.engine.leases()?;
    let leases: Vec<Value> = read
        .value
        .into_iter()
        .map(|(id, ttl, remaining_ms)| {
            json!({ "id": id, "ttl": ttl, "remaining": remaining_ms.div_ceil(1000) })
        })
        .collect();
    let mut resp = Json(json!({ "leases": leases })).into_response();
    resp.headers_mut()
        .insert(REVISION_HEADER, header_value(&read.revision.to_string()));
    Ok(resp)
}
