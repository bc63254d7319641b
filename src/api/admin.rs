//! Service endpoints under `/_`: `/_status` (JSON) and `/_health`.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::error::ApiError;
use super::AppState;

pub async fn handle(state: &AppState, method: Method, path: &str) -> Response {
    let result = match path {
        "/_status" | "/_health" if method != Method::GET && method != Method::HEAD => {
            Err(ApiError::MethodNotAllowed(method.to_string(), "GET, HEAD"))
        }
        "/_status" => status(state).await,
        "/_health" => Ok(health(state).await),
        _ => Err(ApiError::NoSuchPath(format!(
            "no service endpoint {path}; keys starting with _ live under /_kv/"
        ))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn status(state: &AppState) -> Result<Response, ApiError> {
    Ok(Json(state.node.status().await?).into_response())
}

/// Healthy means: the raft loop answers and knows a leader.
async fn health(state: &AppState) -> Response {
    match state.node.status().await {
        Ok(s) if s.leader != 0 => Json(json!({ "health": true })).into_response(),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "health": false, "reason": "no leader" })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "health": false, "reason": e.to_string() })),
        )
            .into_response(),
    }
}
