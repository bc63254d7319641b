//! The client port: etcd's gRPC API ([`grpc`]) and the HTTP API ([`http`]) on one socket, two
//! faces of one service ([`crate::service`]). A request is gRPC when its content type is
//! `application/grpc...`; everything else is the HTTP API.

pub mod grpc;
mod http;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;

use crate::service::Service;

/// The client port: gRPC requests go to etcd's v3 API ([`grpc`]), the rest to the HTTP API.
pub fn router(state: Arc<Service>) -> Router {
    use tower::ServiceExt;
    let grpc = grpc::router(state.clone());
    let http = http::router(state);
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let target = if grpc::is_grpc(req.headers()) {
            grpc.clone()
        } else {
            http.clone()
        };
        target.oneshot(req)
    }))
}

/// Resolves once the member stops serving clients: streams (HTTP and gRPC watches, lease
/// keepalive streams) end then.
pub(crate) async fn stopping(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard wait_for returns is dropped here, before any other await.
    let _ = closing.wait_for(|c| *c).await;
}
