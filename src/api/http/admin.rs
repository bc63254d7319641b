//! Service endpoints under `/_` (the route table is in [`super::router`]):
//!
//! ```text
//! GET    /_status                  this member's view (JSON)
//! GET    /_health                  200 when it has a leader and is not behind; else 503
//! GET    /_metrics                 Prometheus text format (metcd's, then raft-engine's)
//! GET    /_hash                    digest of the state machine at the applied index (JSON),
//!                                  for checking that members converged
//! GET    /_members                 the members (JSON)
//! PUT    /_members/<id>            add a member; body: its peer URL; ?learner=true keeps it
//!                                  a learner until promoted
//! POST   /_members/<id>/promote    promote a learner that has caught up
//! DELETE /_members/<id>            remove a member
//! GET    /_leader                  the leader's id
//! POST   /_leader                  transfer leadership; body: the new leader's id
//! POST   /_compact                 compact history through a revision; body: the revision
//! GET    /_alarms                  {"alarms": [{"member": id, "alarm": "NOSPACE"}]}
//! DELETE /_alarms                  disarm every alarm (writes are refused again at once if
//!                                  the store is still past --quota-backend-bytes)
//! ```
//! Membership and leadership requests answer once the change has happened (applied, or the
//! new leader elected), or fail with a clear status: 400 bad input, 404 unknown member, 409
//! refused (duplicate, last voter, lagging learner, another change in progress), 503 no
//! leader or timeout.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Service;
use super::error::ApiError;
use crate::config::parse_member_url;
use crate::metrics::{Gauges, dir_size};
use crate::raft::members::MemberChange;
use crate::service::access::Caller;
use crate::store::RevisionError;

const SMALL_BODY: usize = 4096;

type Shared = State<Arc<Service>>;

/// `GET /_status`
pub async fn status(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(state.member_status(&caller).await?).into_response())
}

/// `GET /_hash`
pub async fn hash(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    Ok(Json(state.state_hash(&caller).await?).into_response())
}

/// `GET /_members`
pub async fn members(State(state): Shared) -> Result<Response, ApiError> {
    let s = state.member_list().await?;
    Ok(Json(json!({ "leader": s.leader, "members": s.members })).into_response())
}

/// `PUT /_members/<id>`, body: the new member's peer URL.
pub async fn add_member(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let id = member_id(id_segment(&uri))?;
    let text = small_body(body).await?;
    let url = parse_member_url(&text, state.settings.peer_tls.is_some()).map_err(|e| {
        ApiError::BadRequest(format!("the body must be the new member's peer URL: {e}"))
    })?;
    let learner = flag(uri.query(), "learner")?;
    change_members(&state, &caller, MemberChange::Add { id, url, learner }).await
}

/// `DELETE /_members/<id>`
pub async fn remove_member(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = member_id(id_segment(&uri))?;
    change_members(&state, &caller, MemberChange::Remove { id }).await
}

/// Any other method on `/_members/<id>`: a bad id is reported first, then the method.
pub async fn member_method_not_allowed(method: Method, uri: Uri) -> ApiError {
    match member_id(id_segment(&uri)) {
        Err(e) => e,
        Ok(_) => ApiError::MethodNotAllowed(method.to_string(), "PUT, DELETE"),
    }
}

/// `POST /_members/<id>/promote`
pub async fn promote(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let id = member_id(id_segment(&uri))?;
    change_members(&state, &caller, MemberChange::Promote { id }).await
}

/// `GET /_leader`
pub async fn leader(State(state): Shared) -> Result<Response, ApiError> {
    let s = state.member_list().await?;
    Ok(Json(json!({ "leader": s.leader, "term": s.term })).into_response())
}

/// `POST /_leader`, body: the new leader's id.
pub async fn transfer_leader(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let text = small_body(body).await?;
    let to = member_id(text.trim())?;
    state.transfer_leader(&caller, to).await?;
    Ok(Json(json!({ "leader": to })).into_response())
}

/// `POST /_compact`, body: a revision. Compacts history through it on every member (through
/// the log): reads below it answer 410 from then on. 409 at or below the last compaction, 400
/// in the future.
pub async fn compact(
    State(state): Shared,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    body: Body,
) -> Result<Response, ApiError> {
    let text = small_body(body).await?;
    let revision = text
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{:?} is not a revision", text.trim())))?;
    match state.compact(&caller, revision, false).await {
        Err(ApiError::Revision(e @ RevisionError::Compacted { .. })) => {
            Err(ApiError::Conflict(e.to_string()))
        }
        Err(ApiError::Revision(e @ RevisionError::Future { .. })) => {
            Err(ApiError::BadRequest(e.to_string()))
        }
        Err(e) => Err(e),
        Ok(after) => {
            let body = json!({ "compact_revision": revision, "revision": after });
            Ok(Json(body).into_response())
        }
    }
}

/// `GET /_alarms`
pub async fn alarms(State(state): Shared) -> Result<Response, ApiError> {
    let alarms: Vec<_> = state
        .alarms()?
        .into_iter()
        .map(|m| json!({ "member": m, "alarm": "NOSPACE" }))
        .collect();
    Ok(Json(json!({ "alarms": alarms })).into_response())
}

/// `DELETE /_alarms`
pub async fn disarm(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let raised = state.disarm_all(&caller).await?;
    Ok(Json(json!({ "disarmed": raised })).into_response())
}

/// The `<id>` of `/_members/<id>...` as written (not percent-decoded: `%31` is not an id).
fn id_segment(uri: &Uri) -> &str {
    uri.path().split('/').nth(2).unwrap_or("")
}

fn member_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("{text:?} is not a member id (1, 2, ...)")))
}

fn flag(query: Option<&str>, name: &str) -> Result<bool, ApiError> {
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return match v {
                "true" | "1" | "" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(ApiError::BadRequest(format!(
                    "query parameter {name}={v:?}: expected true or false"
                ))),
            };
        }
    }
    Ok(false)
}

async fn small_body(body: Body) -> Result<String, ApiError> {
    let bytes = axum::body::to_bytes(body, SMALL_BODY)
        .await
        .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
    String::from_utf8(bytes.to_vec())
        .map(|s| s.trim().to_string())
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))
}

/// Executes a membership change for `caller` (who travels with it to the leader and into the
/// committed entry, where auth checks it again).
async fn change_members(
    state: &Service,
    caller: &Caller,
    change: MemberChange,
) -> Result<Response, ApiError> {
    let members = state.change_members(caller, change).await?;
    Ok(Json(json!({ "members": members })).into_response())
}

/// Healthy: the raft loop answers, a leader is known, this member takes part in the
/// cluster (not a candidate), and its applied index is within `--health-max-lag` of its
/// commit index.
pub async fn health(State(state): Shared) -> Response {
    let unhealthy = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "health": false, "reason": reason })),
        )
            .into_response()
    };
    let s = match state.node.status().await {
        Ok(s) => s,
        Err(e) => return unhealthy(e.to_string()),
    };
    let lag = s.commit_index.saturating_sub(s.applied_index);
    let max_lag = state.settings.health_max_lag;
    if s.leader == 0 {
        unhealthy("no leader".into())
    } else if s.role == "candidate" || s.role == "pre_candidate" {
        unhealthy(format!("campaigning ({})", s.role))
    } else if lag > max_lag {
        unhealthy(format!(
            "applied index {} is {lag} entries behind commit index {} (--health-max-lag {max_lag})",
            s.applied_index, s.commit_index
        ))
    } else {
        Json(json!({ "health": true, "leader": s.leader, "apply_lag": lag })).into_response()
    }
}

/// `GET /_metrics`: metcd's metrics, then raft-engine's.
pub async fn metrics(State(state): Shared) -> Result<Response, ApiError> {
    let s = state.node.status().await?;
    let engine_dir = state.settings.data_dir.join("engine");
    let (engine_bytes, resident_bytes) = tokio::task::spawn_blocking(move || {
        (dir_size(&engine_dir), crate::metrics::resident_bytes())
    })
    .await
    .unwrap_or((0, 0));
    let learners = s.members.iter().filter(|m| m.role == "learner").count() as u64;
    let g = Gauges {
        term: s.term,
        is_leader: s.role == "leader",
        has_leader: s.leader != 0,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        snapshot_index: s.snapshot_index,
        first_log_index: s.first_log_index,
        last_log_index: s.last_log_index,
        revision: s.revision,
        keys: s.keys,
        engine_bytes,
        members: s.members.len() as u64,
        learners,
        watchers: state.engine.hub().watchers() as u64,
        resident_bytes,
    };
    let text = state.metrics.render(&g);
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
