//! Per-request observation: the request context (request id, source address, later the actor)
//! that events and audit records carry, and the HTTP metrics (requests by route template,
//! method and status; latency; body bytes in and out; requests in flight).
//!
//! Route templates, not paths, label the metrics (a path per image would explode the series):
//! an inner route layer reports axum's matched template in a response extension, and `/v2`
//! catch-all paths are classified by [`crate::v2_route`] into the spec's endpoint shapes.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use kura_registry::context::{self, RequestContext};

use crate::AppState;
use crate::v2_route::{self, V2Route};

/// The route template a request matched, set by [`tag_route`] on the response.
#[derive(Clone)]
struct RouteTemplate(Arc<str>);

/// Inner layer (on every route): passes the matched template out to [`observe`].
pub async fn tag_route(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| Arc::<str>::from(m.as_str()));
    let mut resp = next.run(req).await;
    if let Some(t) = template {
        resp.extensions_mut().insert(RouteTemplate(t));
    }
    resp
}

/// The client's address: the peer, or with `trust_forwarded` the first address of
/// `X-Forwarded-For` (set by the load balancer in front).
fn source_ip(headers: &HeaderMap, peer: Option<IpAddr>, trust_forwarded: bool) -> Option<IpAddr> {
    if trust_forwarded
        && let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return Some(ip);
    }
    peer
}

fn v2_template(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return "/v2/{*rest}";
    };
    match v2_route::parse(rest) {
        Some(V2Route::Manifest { .. }) => "/v2/{name}/manifests/{reference}",
        Some(V2Route::Blob { .. }) => "/v2/{name}/blobs/{digest}",
        Some(V2Route::UploadStart { .. }) => "/v2/{name}/blobs/uploads/",
        Some(V2Route::Upload { .. }) => "/v2/{name}/blobs/uploads/{id}",
        Some(V2Route::Tags { .. }) => "/v2/{name}/tags/list",
        Some(V2Route::Referrers { .. }) => "/v2/{name}/referrers/{digest}",
        None => "/v2/{*rest}",
    }
}

/// Outer layer: opens the request context and records the HTTP metrics.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = source_ip(req.headers(), peer, state.ops.trust_forwarded_for);
    let ctx = Arc::new(RequestContext::new(request_id, ip));
    if !state.ops.metrics {
        return context::scope(ctx, next.run(req)).await;
    }
    // Methods come from clients: anything but the standard ones is one label value, so a
    // client cannot create series at will.
    let method = match req.method().as_str() {
        m @ ("GET" | "HEAD" | "PUT" | "POST" | "PATCH" | "DELETE" | "OPTIONS") => m,
        _ => "other",
    }
    .to_string();
    let path = req.uri().path().to_string();
    // Bytes are counted under the template once it is known; request bodies are read before
    // the response exists, so they are counted into a cell and added at the end.
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let req = req.map(|b| {
        Body::new(Counting {
            inner: b,
            on_data: CountTarget::Cell(received.clone()),
        })
    });
    // A guard, not a decrement after the await: the server drops the future of a request
    // whose client went away, and the gauge must come down then too.
    let in_flight = InFlight::enter();
    let resp = context::scope(ctx, next.run(req)).await;
    drop(in_flight);
    let template: Arc<str> = match resp.extensions().get::<RouteTemplate>() {
        Some(RouteTemplate(t)) if t.as_ref() == "/v2/{*rest}" => Arc::from(v2_template(&path)),
        Some(RouteTemplate(t)) => t.clone(),
        None => Arc::from("unmatched"),
    };
    let status = resp.status().as_u16().to_string();
    let route = template.to_string();
    metrics::counter!("kura_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("kura_http_request_duration_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    let received_total =
        metrics::counter!("kura_http_received_bytes_total", "route" => route.clone());
    received_total.increment(got);
    let sent = metrics::counter!("kura_http_sent_bytes_total", "route" => route);
    resp.map(|b| {
        Body::new(Counting {
            inner: b,
            on_data: CountTarget::Counter(sent),
        })
    })
}

struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> InFlight {
        let g = metrics::gauge!("kura_http_requests_in_flight");
        g.increment(1.0);
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

enum CountTarget {
    Cell(Arc<std::sync::atomic::AtomicU64>),
    Counter(metrics::Counter),
}

/// A body that counts the data bytes passing through.
struct Counting {
    inner: Body,
    on_data: CountTarget,
}

impl HttpBody for Counting {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            match &self.on_data {
                CountTarget::Cell(c) => {
                    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                CountTarget::Counter(c) => c.increment(n),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
