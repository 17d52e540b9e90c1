//! `GET /v1/metrics` (JSON) and `GET /v1/metrics/prometheus` (text exposition). Both render one
//! snapshot of the process's registry (`splai_shared::metrics`), taken after the gauges read
//! from the backends (queue depth, dead letters, workers by health) are refreshed, so the two
//! formats always carry the same values.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use splai_shared::engine::EngineError;
use splai_shared::metrics::{self, Snapshot};
use splai_shared::queue::QueueDepth;

use super::AdminState;
use crate::error::ApiError;

/// Refreshes the scrape-time gauges and takes the snapshot.
async fn snapshot(s: &AdminState) -> Result<(Snapshot, QueueDepth), ApiError> {
    let depth = s
        .engine
        .backends()
        .queue
        .depth()
        .await
        .map_err(|e| ApiError::from(EngineError::from(e)))?;
    let workers = s.engine.list_workers().await?;
    let m = s.engine.metrics();
    m.set_depth(&depth);
    m.set_workers(&workers);
    Ok((m.registry().snapshot(), depth))
}

/// Every metric as JSON (`metrics`: by name, with type, help, labels and series), plus a
/// summary kept from the first version of this endpoint: `counters` (each counter's total
/// over its labels), `queue_depth` and `dead_letter_count`.
#[utoipa::path(
    get,
    path = "/v1/metrics",
    operation_id = "metrics_json",
    tag = "metrics",
    responses((status = 200, description = "Every metric with its labels, counter totals, queue depth", body = Object))
)]
pub async fn json(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let (snap, depth) = snapshot(&s).await?;
    Ok(Json(json!({
        "queue_backend": s.engine.metrics().queue_backend(),
        "metrics": metrics::json(&snap),
        "counters": snap.counter_totals(),
        "queue_depth": {
            "interactive": depth.interactive,
            "standard": depth.standard,
            "batch": depth.batch,
            "leased": depth.leased,
        },
        "dead_letter_count": depth.dead,
    })))
}

/// Every metric in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/v1/metrics/prometheus",
    operation_id = "metrics_prometheus",
    tag = "metrics",
    responses((status = 200, description = "The Prometheus text exposition format",
               content((String = "text/plain"))))
)]
pub async fn prometheus(State(s): State<AdminState>) -> Result<impl IntoResponse, ApiError> {
    let (snap, _) = snapshot(&s).await?;
    Ok((
        [(header::CONTENT_TYPE, metrics::PROMETHEUS_CONTENT_TYPE)],
        metrics::prometheus_text(&snap),
    ))
}
