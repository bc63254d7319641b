//! The client HTTP API (HTTP/1.x, the seed's curl-friendly protocol).
//!
//! Routing: paths beginning with `/_` belong to the service ([`admin`]), except `/_kv/<key>`,
//! which addresses any key; every other path is a key ([`keys`]).

mod admin;
pub mod error;
mod keys;
mod query;
mod range;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::Router;

use crate::config::Settings;
use crate::engine::Engine;
use crate::raft::NodeHandle;

pub struct AppState {
    pub node: NodeHandle,
    pub engine: Arc<dyn Engine>,
    pub settings: Arc<Settings>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let path = uri.path();
    let query = uri.query();
    if let Some(key) = path.strip_prefix("/_kv/") {
        return keys::handle(&state, method, key, query, body).await;
    }
    if path.starts_with("/_") {
        return admin::handle(&state, method, path).await;
    }
    keys::handle(
        &state,
        method,
        path.strip_prefix('/').unwrap_or(path),
        query,
        body,
    )
    .await
}
