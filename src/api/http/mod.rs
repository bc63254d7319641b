//! The client HTTP API (HTTP/1.x, the seed's curl-friendly protocol).
//!
//! [`router`] is the one route table: each service endpoint under `/_` ([`admin`]) with the
//! methods it serves, then a fallback for keys ([`keys`]): every path not beginning with `/_`,
//! and `/_kv/<key>`, which addresses any key. Any other `/_` path is 404; a method an endpoint
//! does not serve is 405 with the `Allow` list of its row.
//!
//! Every request's latency is recorded by route, method and status for `/_metrics`. An
//! endpoint's route label is its row's path; key requests are "key", or "range" when the
//! query asks for a listing; unknown `/_` paths are "other".

mod access;
mod admin;
mod body;
mod coordination;
pub mod error;
mod headers;
mod keys;
mod leases;
mod query;
mod range;
mod txn;
mod watch;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};

use crate::metrics::Metrics;
use crate::service::Service;
use crate::service::access::{Caller, Credentials};
use error::ApiError;

type Shared = Arc<Service>;

/// The HTTP API: the service endpoints, then keys.
pub(super) fn router(state: Shared) -> Router {
    let get_only = "GET, HEAD";
    // A bad id is 400 before a wrong method is 405 (Allow: PUT, DELETE), as before the table.
    let member = put(admin::add_member)
        .delete(admin::remove_member)
        .fallback(admin::member_method_not_allowed);
    Table::new(&state)
        .row("/_status", allow(get_only, get(admin::status)))
        .row("/_health", allow(get_only, get(admin::health)))
        .row("/_metrics", allow(get_only, get(admin::metrics)))
        .row("/_hash", allow(get_only, get(admin::hash)))
        .row("/_members", allow(get_only, get(admin::members)))
        .row("/_members/{id}", member)
        .row(
            "/_members/{id}/promote",
            allow("POST", post(admin::promote)),
        )
        .row("/_compact", allow("POST", post(admin::compact)))
        .row(
            "/_alarms",
            allow(
                "GET, HEAD, DELETE",
                get(admin::alarms).delete(admin::disarm),
            ),
        )
        .row("/_txn", allow("POST", post(txn::handle)))
        .row(
            "/_leases",
            allow("GET, HEAD, POST", get(leases::list).post(leases::grant)),
        )
        .row(
            "/_leases/{id}",
            allow(
                "GET, HEAD, DELETE",
                get(leases::show).delete(leases::revoke),
            ),
        )
        .row(
            "/_leases/{id}/keepalive",
            allow("POST", post(leases::keep_alive)),
        )
        .row(
            "/_leader",
            allow("GET, POST", get(admin::leader).post(admin::transfer_leader)),
        )
        .row(
            "/_lock/{*name}",
            allow(
                "POST, DELETE",
                post(coordination::lock).delete(coordination::unlock),
            ),
        )
        .row(
            "/_election/{*name}",
            allow(
                "GET, HEAD, POST, PUT, DELETE",
                get(coordination::leader)
                    .post(coordination::campaign)
                    .put(coordination::proclaim)
                    .delete(coordination::resign),
            ),
        )
        .row(
            "/_auth/authenticate",
            allow("POST", post(access::authenticate)),
        )
        .router
        .fallback(keys_or_unknown)
        .with_state(state)
}

/// The service paths' auth layer. With auth enabled: resolves who asks (HTTP Basic, Bearer
/// token, or client certificate) and hands the caller to the handlers, whose service calls
/// check what it may do (root for administration), as they do for gRPC.
/// `/_auth/authenticate` is open, and so are `/_metrics` and `/_health` unless
/// `--auth-protect-metrics`. Keys are authorized in [`keys_or_unknown`] instead, without a
/// layer (a layer on every request costs a tenth of a GET's CPU; docs/benchmarks.md).
async fn authorize(State(state): State<Shared>, mut req: Request, next: Next) -> Response {
    match state.access.view() {
        // Auth off: credentials are ignored, even malformed ones (as etcd does).
        Ok(view) if !view.state.enabled => {
            req.extensions_mut().insert(Caller::Anyone);
            return next.run(req).await;
        }
        Ok(_) => {}
        Err(e) => return ApiError::from(e).into_response(),
    }
    let facts = request_facts(&req);
    let decided = match facts {
        Ok(facts) => caller_for(&state, facts).await,
        Err(e) => Err(e),
    };
    match decided {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The caller (`None` on an open path), given the request's [`request_facts`] (taken before
/// any await: a request is not `Sync`).
async fn caller_for(
    state: &Service,
    (path, creds): (String, Credentials),
) -> Result<Option<Caller>, ApiError> {
    let view = state.access.view()?;
    if !view.state.enabled {
        return Ok(Some(Caller::Anyone));
    }
    let monitoring = matches!(path.as_str(), "/_metrics" | "/_health");
    if path == "/_auth/authenticate" || (monitoring && !state.settings.auth_protect_metrics) {
        return Ok(None);
    }
    let caller = state.access.caller(&creds).await?;
    // Monitoring, when protected, is for root. Every other root-only operation is checked by
    // the service ([`crate::service`]), for both protocols.
    if monitoring {
        caller.admin()?;
    }
    Ok(Some(caller))
}

/// A request's path (without a trailing slash) and its credentials.
fn request_facts(req: &Request) -> Result<(String, Credentials), ApiError> {
    let path = req.uri().path();
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<crate::tls::Remote>>()
        .map(|c| &c.0);
    let creds = access::http_credentials(req.headers(), remote)?;
    Ok((path.to_string(), creds))
}

/// The rows of the route table, each timed under its own path.
struct Table {
    router: Router<Shared>,
    state: Shared,
}

impl Table {
    fn new(state: &Shared) -> Self {
        Table {
            router: Router::new(),
            state: state.clone(),
        }
    }

    /// Serves `path`, and `path/` (a trailing slash names the same endpoint), with `methods`.
    /// A path ending in a wildcard (`{*name}`) takes the rest of the path, slashes included.
    fn row(mut self, path: &'static str, methods: MethodRouter<Shared>) -> Self {
        let label = RouteLabel {
            metrics: self.state.metrics.clone(),
            route: path,
        };
        let methods = methods
            .layer(from_fn_with_state(self.state.clone(), authorize))
            .layer(from_fn_with_state(label, timed));
        self.router = if path.contains("{*") {
            self.router.route(path, methods)
        } else {
            self.router
                .route(path, methods.clone())
                .route(&format!("{path}/"), methods)
        };
        self
    }
}

/// `methods`, with 405 and `Allow: <allowed>` for any other method.
fn allow(allowed: &'static str, methods: MethodRouter<Shared>) -> MethodRouter<Shared> {
    methods.fallback(move |method: Method| async move {
        ApiError::MethodNotAllowed(method.to_string(), allowed)
    })
}

#[derive(Clone)]
struct RouteLabel {
    metrics: Arc<Metrics>,
    route: &'static str,
}

/// Records a service endpoint's latency. Keys are timed in [`keys_or_unknown`] instead, without
/// a layer: one on every request was measurably slower (docs/benchmarks.md, "Cost of request
/// metrics").
async fn timed(State(label): State<RouteLabel>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    label
        .metrics
        .observe_request(label.route, method.as_str(), status, elapsed);
    resp
}

/// The fallback: a key (`/<key>` or `/_kv/<key>`), else an unknown service path (404).
async fn keys_or_unknown(
    State(state): State<Shared>,
    remote: Option<axum::Extension<axum::extract::ConnectInfo<crate::tls::Remote>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let method_label = method.clone();
    let path = uri.path();
    let (route, resp) = match key_path(path) {
        Some(raw_key) => {
            let caller = match key_caller(&state, &headers, remote.as_ref().map(|r| &r.0.0)).await {
                Ok(caller) => caller,
                Err(e) => return e.into_response(),
            };
            let req = keys::KeyRequest {
                method,
                raw_key,
                query: uri.query(),
                headers: &headers,
                body,
                caller: &caller,
            };
            (key_label(uri.query()), keys::handle(&state, req).await)
        }
        None => ("other", no_such_path(path).into_response()),
    };
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(route, method_label.as_str(), status, elapsed);
    resp
}

/// Who asks for a key: anyone while auth is off (the common case, decided first and
/// cheaply), else the user the credentials name.
async fn key_caller(
    state: &Service,
    headers: &HeaderMap,
    remote: Option<&crate::tls::Remote>,
) -> Result<Caller, ApiError> {
    if !state.access.view()?.state.enabled {
        return Ok(Caller::Anyone);
    }
    let creds = access::http_credentials(headers, remote)?;
    Ok(state.access.caller(&creds).await?)
}

/// The raw (percent-encoded) key a path addresses; `None` for a service path.
fn key_path(path: &str) -> Option<&str> {
    match path.strip_prefix("/_kv/") {
        Some(key) => Some(key),
        None if path.starts_with("/_") => None,
        None => Some(path.strip_prefix('/').unwrap_or(path)),
    }
}

/// "range" when the query asks for a listing, else "key".
fn key_label(query: Option<&str>) -> &'static str {
    let range = query
        .unwrap_or("")
        .split('&')
        .any(|p| p.starts_with("prefix=") || p == "prefix" || p.starts_with("end="));
    if range { "range" } else { "key" }
}

fn no_such_path(path: &str) -> ApiError {
    let path = path.trim_end_matches('/');
    ApiError::NoSuchPath(format!(
        "no service endpoint {path}; keys starting with _ live under /_kv/"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_service_paths() {
        assert_eq!(key_path("/a/b"), Some("a/b"));
        assert_eq!(key_path("/"), Some(""));
        assert_eq!(key_path("/_kv/_a"), Some("_a"));
        assert_eq!(key_path("/_kv/"), Some(""));
        assert_eq!(key_path("/_kv"), None);
        assert_eq!(key_path("/_status"), None);
        assert_eq!(key_label(Some("prefix=true&limit=2")), "range");
        assert_eq!(key_label(Some("end=")), "range");
        assert_eq!(key_label(Some("consistency=s")), "key");
        assert_eq!(key_label(None), "key");
    }
}
