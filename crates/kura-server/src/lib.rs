//! The HTTP layer: routing, request parsing and response shaping, and nothing else.
//!
//! Handlers parse a request, call one [`kura_registry::Registry`] method and map its result or
//! error to the distribution spec's wire format. Cross-cutting concerns (request ids, tracing,
//! panics, the API version header) are tower layers applied in [`router`].

// Handler errors are whole responses (or carry the headers of one); they are the cold path of
// an I/O-bound server, so their size is not worth an allocation per error.
#![allow(clippy::result_large_err)]

mod api;
pub mod audit;
mod auth;
mod errors;
mod health;
mod lifecycle_api;
mod observe;
mod ops_api;
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
    /// Audit log, webhooks and metrics.
    pub ops: Ops,
}

/// The operations services the HTTP layer feeds and exposes.
#[derive(Clone, Default)]
pub struct Ops {
    pub audit: Option<std::sync::Arc<kura_ops::AuditLog>>,
    pub webhooks: Option<std::sync::Arc<kura_ops::Webhooks>>,
    /// Record HTTP metrics.
    pub metrics: bool,
    /// Serve `/metrics` on the main listener (with the store for scrape-time gauges).
    pub prometheus: Option<(
        metrics_exporter_prometheus::PrometheusHandle,
        std::sync::Arc<dyn kura_metadata::OpsStore>,
    )>,
    /// Take the client address from `X-Forwarded-For` (behind a trusted load balancer).
    pub trust_forwarded_for: bool,
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
    // One access-log line per response at INFO (silence with RUST_LOG=tower_http=warn).
    let trace = TraceLayer::new_for_http()
        .on_response(
            tower_http::trace::DefaultOnResponse::new()
                .level(tracing::Level::INFO)
                .latency_unit(tower_http::LatencyUnit::Micros),
        )
        .make_span_with(|req: &Request<_>| {
        let id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
    });
    let mut app = Router::new()
        .merge(v2::routes())
        .merge(health::routes())
        .merge(
            api::routes().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                audit::audit_management,
            )),
        )
        .route("/token", axum::routing::get(auth::token));
    if let Some((handle, store)) = state.ops.prometheus.clone() {
        app = app.merge(metrics_routes(handle, store, state.registry.clone()));
    }
    app.route_layer(axum::middleware::from_fn(observe::tag_route))
        .with_state(state.clone())
        .layer(CatchPanicLayer::custom(errors::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state,
            observe::observe,
        ))
        .layer(trace)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeUuid))
}

/// `GET /metrics`: the Prometheus text format, with the scrape-time gauges refreshed first.
pub fn metrics_routes<S: Clone + Send + Sync + 'static>(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    store: std::sync::Arc<dyn kura_metadata::OpsStore>,
    registry: Registry,
) -> Router<S> {
    Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (handle, store) = (handle.clone(), store.clone());
            let pending_uploads = registry.pending_uploads() as u64;
            async move {
                kura_ops::metrics::refresh(store.as_ref(), pending_uploads).await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// The most response bytes hyper queues on one HTTP/1 connection before it stops pulling the
/// body. Blob bodies arrive in 256 KiB chunks; with hyper's default (about 400 KiB) two queued
/// chunks plus the read in flight made 32 concurrent pulls hold ~24 MiB, which was most of the
/// peak RSS. With this limit one chunk is queued while the next is read.
const HTTP1_MAX_BUF: usize = 128 * 1024;

/// Serves `router` on `listener` until `shutdown` resolves, then drains in-flight requests.
/// HTTP/1.1, and HTTP/2 with prior knowledge, on one port.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(HTTP1_MAX_BUF);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: keep serving the connections we have
                    // and try again shortly, rather than spin or stop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        no_delay(&mut stream);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Turns Nagle's algorithm off on an accepted connection. With it on, a response written as
/// headers and then a small body waited for the client's delayed ACK: every small blob GET
/// took 40 ms more (p99 exactly 48 ms under load).
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
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
