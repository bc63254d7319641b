//! The HTTP face of identity: credentials from `Authorization` and the client certificate,
//! and `POST /_auth/authenticate`. Who the caller is and what it may do: [`crate::service::access`].

use std::sync::Arc;

use super::error::ApiError;
use crate::service::Service;
use crate::service::access::Credentials;

/// The credentials of an HTTP request: `Authorization: Bearer <token>` or `Basic
/// base64(user:password)`, and the client certificate's CN.
pub fn http_credentials(
    headers: &axum::http::HeaderMap,
    remote: Option<&crate::tls::Remote>,
) -> Result<Credentials, ApiError> {
    use base64::Engine as _;
    let mut creds = Credentials {
        cert_cn: remote.and_then(|r| r.common_name.clone()),
        from: remote.map(|r| r.addr.ip()),
        ..Credentials::default()
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(creds);
    };
    let bad = |why: &str| ApiError::BadRequest(format!("Authorization header: {why}"));
    let value = value.to_str().map_err(|_| bad("not ASCII"))?.trim();
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or_else(|| bad("expected Basic or Bearer"))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        creds.token = Some(rest.trim().to_string());
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| bad("Basic credentials are not base64"))?;
        let text =
            String::from_utf8(decoded).map_err(|_| bad("Basic credentials are not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad("Basic credentials must be user:password"))?;
        creds.password = Some((user.to_string(), password.to_string()));
    } else {
        return Err(bad("expected Basic or Bearer"));
    }
    Ok(creds)
}

/// `POST /_auth/authenticate` with `{"name": ..., "password": ...}`: `{"token": ...}` for
/// `Authorization: Bearer`.
pub async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<Service>>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<crate::tls::Remote>>>,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    #[derive(serde::Deserialize)]
    struct Login {
        name: String,
        password: String,
    }
    let body = super::body::read_value(body, 64 * 1024).await?;
    let login: Login = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body must be {{\"name\": ..., \"password\": ...}}: {e}"
        ))
    })?;
    let from = connect.map(|c| c.0.0.addr.ip());
    let token = state
        .authenticate(&login.name, &login.password, from)
        .await?;
    Ok(axum::Json(serde_json::json!({ "token": token })).into_response())
}
