//! The worker's own metrics, served as Prometheus text on `/metrics` at
//! `SPLAI_WORKER_METRICS_ADDR` (off unless set): tasks running, tasks finished by type and
//! outcome, model-server call latency by backend and model, and model-server errors by backend
//! and kind. Same registry type as the gateway's (`splai_shared::metrics`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use splai_shared::metrics::{
    Counter, Gauge, Histogram, Label, PROMETHEUS_CONTENT_TYPE, Registry, SECONDS_BUCKETS,
    prometheus_text,
};

use crate::models::ModelError;

/// The worker's metric families.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Arc<Registry>,
    running: Gauge,
    finished: Counter,
    model_latency: Histogram,
    model_errors: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new(Arc::new(Registry::default()))
    }
}

impl WorkerMetrics {
    /// Registers the worker's families in `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        let r = &registry;
        let m = Self {
            running: r.gauge("worker_tasks_running", "Tasks executing now.", &[]),
            finished: r.counter(
                "worker_tasks_finished_total",
                "Attempts finished, by task type and outcome (completed, failed, timed_out, \
                 stopped).",
                &[Label::Fixed("task_type"), Label::Fixed("outcome")],
            ),
            model_latency: r.histogram(
                "worker_executor_duration_seconds",
                "Duration of executors' model-server calls (completions and embeddings), by \
                 backend and model.",
                &[Label::Fixed("backend"), Label::Capped("model")],
                SECONDS_BUCKETS,
            ),
            model_errors: r.counter(
                "worker_model_errors_total",
                "Failed model-server calls, by backend and kind (unreachable, server, \
                 rejected, bad_response, unsupported).",
                &[Label::Fixed("backend"), Label::Fixed("kind")],
            ),
            registry: registry.clone(),
        };
        m.running.set(&[], 0);
        m
    }

    /// The registry, to render.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// A task started; the guard counts it finished when dropped.
    pub(crate) fn task_started(self: &Arc<Self>) -> RunningGuard {
        self.running.add(&[], 1);
        RunningGuard(self.clone())
    }

    /// An attempt ended with `outcome`.
    pub(crate) fn task_finished(&self, task_type: &str, outcome: &str) {
        self.finished.inc(&[task_type, outcome]);
    }

    /// A model-server call took `seconds`; `error` when it failed.
    pub(crate) fn model_call(
        &self,
        backend: &str,
        model: &str,
        seconds: f64,
        error: Option<&ModelError>,
    ) {
        self.model_latency.observe(&[backend, model], seconds);
        if let Some(e) = error {
            self.model_errors.inc(&[backend, error_kind(e)]);
        }
    }

    /// The Prometheus text of every family.
    pub fn render(&self) -> String {
        prometheus_text(&self.registry.snapshot())
    }
}

/// Counts a running task down when the attempt ends, however it ends.
pub(crate) struct RunningGuard(Arc<WorkerMetrics>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.add(&[], -1);
    }
}

fn error_kind(e: &ModelError) -> &'static str {
    match e {
        ModelError::Unreachable { .. } => "unreachable",
        ModelError::Server { .. } => "server",
        ModelError::Rejected { .. } => "rejected",
        ModelError::BadResponse { .. } => "bad_response",
        ModelError::Unsupported(_) => "unsupported",
    }
}

/// Binds `addr` and serves `GET /metrics` until the process ends. Returns the bound address
/// (a port of 0 picks a free one).
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(addr: SocketAddr, metrics: Arc<WorkerMetrics>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding SPLAI_WORKER_METRICS_ADDR={addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                    m.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}
