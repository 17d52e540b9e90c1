//! `http_request_duration_seconds{route, method, status}`: a middleware on the whole local
//! server. The route is axum's matched template (`/v1/jobs/{id}`), never the raw path, so job
//! ids cannot become labels; requests that match no route count under `unmatched`. For an
//! event stream the duration is the time to the response head, not the stream's life.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use splai_shared::metrics::{Histogram, Label, Registry, SECONDS_BUCKETS};

/// The HTTP duration histogram.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    duration: Histogram,
}

impl HttpMetrics {
    /// Registers the family in `registry` (or shares it if already there).
    pub fn new(registry: &Registry) -> Arc<Self> {
        Arc::new(Self {
            duration: registry.histogram(
                "http_request_duration_seconds",
                "HTTP request duration to the response head, by route template, method and \
                 status.",
                &[
                    Label::Fixed("route"),
                    Label::Fixed("method"),
                    Label::Fixed("status"),
                ],
                SECONDS_BUCKETS,
            ),
        })
    }
}

/// Times the request and records it under its matched route.
pub async fn track(State(m): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    // A cheap clone (shared string), so the hot path does not copy the route.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    m.duration.observe(
        &[route, method, resp.status().as_str()],
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Standard methods by name; anything else (a client can send any token) as `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
