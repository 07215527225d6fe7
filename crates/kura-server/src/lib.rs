//! The HTTP layer: routing, request parsing and response shaping, and nothing else.
//!
//! Handlers parse a request, call one [`kura_registry::Registry`] method and map its result or
//! error to the distribution spec's wire format. Cross-cutting concerns (request ids, tracing,
//! panics, the API version header) are tower layers applied in [`router`].

// Handler errors are whole responses (or carry the headers of one); they are the cold path of
// an I/O-bound server, so their size is not worth an allocation per error.
#![allow(clippy::result_large_err)]

mod api;
mod auth;
mod errors;
mod health;
mod lifecycle_api;
mod range;
mod v2;
mod v2_route;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Request};
use kura_registry::Registry;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

pub use errors::error_response;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub auth: std::sync::Arc<kura_auth::Auth>,
    /// Token realm URL to announce (`auth.realm`); `None`: derived from each request's Host.
    pub realm: Option<String>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Default)]
struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _req: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Builds the complete application router.
pub fn router(state: AppState) -> Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        let id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
    });
    Router::new()
        .merge(v2::routes())
        .merge(health::routes())
        .merge(api::routes())
        .route("/token", axum::routing::get(auth::token))
        .with_state(state)
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeUuid))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Periodically removes expired upload sessions until the process ends.
pub fn spawn_upload_expiry(registry: Registry, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = registry.purge_stale_uploads().await {
                tracing::warn!(error = %e, "upload expiry sweep failed");
            }
        }
    })
}

/// Ticks the lifecycle scheduler (cron-scheduled GC and retention, resumption of an
/// interrupted GC run).
pub fn spawn_scheduler(registry: Registry, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = registry.schedule_tick().await {
                tracing::warn!(error = %e, "lifecycle scheduler tick failed");
            }
        }
    })
}
