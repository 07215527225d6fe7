//! Liveness (`/healthz`) and readiness (`/readyz`: both backends answer).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let checks = state.registry.check_backends().await;
    let ready = checks.iter().all(|(_, _, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(what, kind, r)| {
            let v = match r {
                Ok(()) => json!({ "backend": kind, "status": "ok" }),
                Err(e) => json!({ "backend": kind, "status": "error", "error": e }),
            };
            (what.to_string(), v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": body })))
}
