//! Authentication on the wire: reading credentials, the single authorization point for `/v2`
//! requests, `WWW-Authenticate` challenges, and the Docker token endpoint (`GET /token`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kura_auth::{Action, AuthError, AuthMode, Denial, Identity};
use kura_oci::ErrorCode;
use kura_registry::RegistryError;

use crate::AppState;
use crate::errors::ApiError;

/// Who sent the request. Bad credentials are an error (401), missing ones are anonymous.
pub async fn identify(state: &AppState, headers: &HeaderMap) -> Result<Identity, ApiError> {
    if state.auth.mode() == AuthMode::Open {
        return Ok(Identity::anonymous());
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.auth.authenticate(value).await {
        Ok(id) => {
            crate::audit::note_identity(&id);
            Ok(id)
        }
        Err(AuthError::BadCredentials) => {
            crate::audit::login_failed(state, headers, "invalid username or password");
            Err(challenge(state, headers, None, false))
        }
        Err(e @ AuthError::Throttled(_)) => {
            crate::audit::login_failed(state, headers, &e.to_string());
            Err(ApiError::new(ErrorCode::TooManyRequests, e.to_string()))
        }
        Err(e) => Err(ApiError::from(RegistryError::internal(e))),
    }
}

/// The token realm: `auth.realm` if configured, else this server as the client reached it.
fn realm(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(r) = &state.realm {
        return r.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}/token")
}

/// A 401 with the Bearer challenge clients follow to the token endpoint.
pub fn challenge(
    state: &AppState,
    headers: &HeaderMap,
    scope: Option<String>,
    insufficient: bool,
) -> ApiError {
    let mut value = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(state, headers),
        state.auth.service()
    );
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    if insufficient {
        value.push_str(",error=\"insufficient_scope\"");
    }
    let mut e = ApiError::from(RegistryError::new(
        ErrorCode::Unauthorized,
        "authentication required",
    ));
    e.challenge = HeaderValue::from_str(&value).ok();
    e
}

/// Docker scope actions for a challenge.
fn scope_actions(needed: &[Action]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for a in needed {
        let names: &[&str] = match a {
            Action::Pull | Action::List => &["pull"],
            Action::Push => &["pull", "push"],
            Action::Delete => &["delete"],
            _ => &[],
        };
        for n in names {
            if !out.contains(n) {
                out.push(n);
            }
        }
    }
    out.join(",")
}

/// The single authorization point for registry requests on a repository.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    identity: &Identity,
    repository: &str,
    needed: &[Action],
) -> Result<(), ApiError> {
    let decision = state
        .auth
        .authorize(identity, repository, needed)
        .await
        .map_err(|e| ApiError::from(RegistryError::internal(e)))?;
    let scope = || Some(format!("repository:{repository}:{}", scope_actions(needed)));
    let action = match needed.first() {
        Some(Action::Push) => "push",
        Some(Action::Delete) => "delete",
        Some(Action::List) => "list",
        _ => "pull",
    };
    match decision {
        Ok(()) => Ok(()),
        Err(Denial::NeedsAuthentication) => Err(challenge(state, headers, scope(), false)),
        Err(Denial::InsufficientScope) => {
            crate::audit::registry_denied(state, action, repository, "insufficient scope");
            Err(challenge(state, headers, scope(), true))
        }
        Err(Denial::Forbidden(msg)) => {
            crate::audit::registry_denied(state, action, repository, &msg);
            Err(ApiError::new(ErrorCode::Denied, msg))
        }
        Err(Denial::ProjectMissing(p)) => Err(ApiError::from(
            RegistryError::new(
                ErrorCode::NameUnknown,
                format!("project {p} does not exist; create it first"),
            )
            .with_detail(serde_json::json!({ "project": p })),
        )),
    }
}

/// `/v2/` itself: in local mode any valid identity but a credential-less one.
pub fn require_identity(
    state: &AppState,
    headers: &HeaderMap,
    identity: &Identity,
) -> Result<(), ApiError> {
    if state.auth.mode() != AuthMode::Open && identity.grants.is_none() && identity.is_anonymous() {
        return Err(challenge(state, headers, None, false));
    }
    Ok(())
}

/// `GET /token?service=...&scope=...`: the Docker token endpoint.
pub async fn token(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if state.auth.mode() == AuthMode::Open {
        return api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "token authentication is off (auth.mode = open)",
        );
    }
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Tokens authenticate registry requests, not token requests: only Basic (or nothing).
    if value.is_some_and(|v| !v.trim_start().to_ascii_lowercase().starts_with("basic ")) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "use HTTP Basic credentials to get a token",
        );
    }
    let identity = match state.auth.authenticate(value).await {
        Ok(id) => id,
        Err(AuthError::BadCredentials) => {
            crate::audit::login_failed(&state, &headers, "invalid username or password");
            let mut r = api_error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "invalid username or password",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kura\""),
            );
            return r;
        }
        Err(e @ AuthError::Throttled(_)) => {
            crate::audit::login_failed(&state, &headers, &e.to_string());
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                &e.to_string(),
            );
        }
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()),
    };
    let pairs = crate::v2::query_pairs(query.as_deref());
    let scopes: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone())
        .collect();
    let params: HashMap<_, _> = pairs.into_iter().collect();
    if let Some(service) = params.get("service")
        && service != state.auth.service()
    {
        return api_error(
            StatusCode::BAD_REQUEST,
            "INVALID",
            &format!(
                "unknown service {service:?}; this registry is {:?}",
                state.auth.service()
            ),
        );
    }
    match state.auth.issue_token(&identity, &scopes).await {
        Ok(t) => {
            if !identity.is_anonymous() {
                crate::audit::login_succeeded(&state, &identity, &scopes);
            }
            (StatusCode::OK, Json(t)).into_response()
        }
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", &e.to_string()),
    }
}

/// A JSON error in the management API's shape.
pub fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("valid response")
}
