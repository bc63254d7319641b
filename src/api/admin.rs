//! Service endpoints under `/_`:
//!
//! ```text
//! GET    /_status                  this member's view (JSON)
//! GET    /_health                  200 when it has a leader and is not behind; else 503
//! GET    /_metrics                 Prometheus text format
//! GET    /_hash                    digest of the state machine at the applied index (JSON),
//!                                  for checking that members converged
//! GET    /_members                 the members (JSON)
//! PUT    /_members/<id>            add a member; body: its peer URL; ?learner=true keeps it
//!                                  a learner until promoted
//! POST   /_members/<id>/promote    promote a learner that has caught up
//! DELETE /_members/<id>            remove a member
//! GET    /_leader                  the leader's id
//! POST   /_leader                  transfer leadership; body: the new leader's id
//! ```
//! Membership and leadership requests answer once the change has happened (applied, or the
//! new leader elected), or fail with a clear status: 400 bad input, 404 unknown member, 409
//! refused (duplicate, last voter, lagging learner, another change in progress), 503 no
//! leader or timeout.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::config::parse_url;
use crate::metrics::{dir_size, Gauges};
use crate::raft::members::MemberChange;
use crate::raft::peer_client;

const SMALL_BODY: usize = 4096;

pub async fn handle(state: &AppState, method: Method, uri: &Uri, body: Body) -> Response {
    route(state, method, uri, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    state: &AppState,
    method: Method,
    uri: &Uri,
    body: Body,
) -> Result<Response, ApiError> {
    let path = uri.path().trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let get_only = |allowed: &'static str| {
        if method == Method::GET || method == Method::HEAD {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(method.to_string(), allowed))
        }
    };
    match parts.as_slice() {
        ["_status"] => {
            get_only("GET, HEAD")?;
            Ok(Json(state.node.status().await?).into_response())
        }
        ["_health"] => {
            get_only("GET, HEAD")?;
            Ok(health(state).await)
        }
        ["_metrics"] => {
            get_only("GET, HEAD")?;
            metrics(state).await
        }
        ["_hash"] => {
            get_only("GET, HEAD")?;
            Ok(Json(state.node.state_hash().await?).into_response())
        }
        ["_members"] => {
            get_only("GET, HEAD")?;
            let s = state.node.status().await?;
            Ok(Json(json!({ "leader": s.leader, "members": s.members })).into_response())
        }
        ["_members", id] => {
            let id = member_id(id)?;
            let change = match method {
                Method::PUT => {
                    let text = small_body(body).await?;
                    let (url, _) = parse_url(&text).map_err(|e| {
                        ApiError::BadRequest(format!(
                            "the body must be the new member's peer URL: {e}"
                        ))
                    })?;
                    let learner = flag(uri.query(), "learner")?;
                    MemberChange::Add { id, url, learner }
                }
                Method::DELETE => MemberChange::Remove { id },
                _ => {
                    return Err(ApiError::MethodNotAllowed(
                        method.to_string(),
                        "PUT, DELETE",
                    ));
                }
            };
            change_members(state, change).await
        }
        ["_members", id, "promote"] => {
            if method != Method::POST {
                return Err(ApiError::MethodNotAllowed(method.to_string(), "POST"));
            }
            let id = member_id(id)?;
            change_members(state, MemberChange::Promote { id }).await
        }
        ["_leader"] => match method {
            Method::GET | Method::HEAD => {
                let s = state.node.status().await?;
                Ok(Json(json!({ "leader": s.leader, "term": s.term })).into_response())
            }
            Method::POST => {
                let text = small_body(body).await?;
                let to = member_id(text.trim())?;
                state.node.transfer_leader(to).await?;
                Ok(Json(json!({ "leader": to })).into_response())
            }
            _ => Err(ApiError::MethodNotAllowed(method.to_string(), "GET, POST")),
        },
        _ => Err(ApiError::NoSuchPath(format!(
            "no service endpoint {path}; keys starting with _ live under /_kv/"
        ))),
    }
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

async fn change_members(state: &AppState, change: MemberChange) -> Result<Response, ApiError> {
    let json = peer_client::execute(&state.admin, change, 0).await?;
    let mut resp = (StatusCode::OK, json).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Healthy: the raft loop answers, a leader is known, this member takes part in the
/// cluster (not a candidate), and its applied index is within `--health-max-lag` of its
/// commit index.
async fn health(state: &AppState) -> Response {
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

async fn metrics(state: &AppState) -> Result<Response, ApiError> {
    let s = state.node.status().await?;
    let engine_dir = state.settings.data_dir.join("engine");
    let engine_bytes = tokio::task::spawn_blocking(move || dir_size(&engine_dir))
        .await
        .unwrap_or(0);
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
    };
    let mut resp = (StatusCode::OK, state.metrics.render(&g)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(resp)
}
