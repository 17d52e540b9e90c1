//! An OpenTelemetry collector double: accepts OTLP/HTTP trace exports in JSON
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) at `/v1/traces` and keeps every span, so a test
//! can check what the processes exported.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tokio::task::JoinHandle;

/// One exported span, as much of it as the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
}

/// A running collector on `127.0.0.1:0`.
pub struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    server: JoinHandle<()>,
}

impl Collector {
    /// Starts one inside the calling test's runtime.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start() -> Collector {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector { url, spans, server }
    }

    /// The endpoint to give `SPLAI_OTEL_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn export(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: String) -> StatusCode {
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut got = parse(&request);
    spans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .append(&mut got);
    StatusCode::OK
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn parse(request: &Value) -> Vec<Span> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut out = Vec::new();
    for rs in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .map(|a| text(&a["value"], "stringValue"))
            .unwrap_or_default();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: text(s, "name"),
                    trace_id: text(s, "traceId"),
                    span_id: text(s, "spanId"),
                    parent_span_id: text(s, "parentSpanId"),
                });
            }
        }
    }
    out
}
