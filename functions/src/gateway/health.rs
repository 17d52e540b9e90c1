//! Liveness, readiness and the engine's counters.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::error::ApiError;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The backends answer.
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    match s.engine.ready().await {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable" })),
            )
        }
    }
}

/// Engine counters and queue depth as JSON.
pub async fn metrics(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let depth = s
        .engine
        .backends()
        .queue
        .depth()
        .await
        .map_err(|e| ApiError::from(splai_shared::engine::EngineError::from(e)))?;
    Ok(Json(json!({
        "queue_backend": s.engine.backends().queue.backend_name(),
        "counters": s.engine.counters().snapshot(),
        "queue_depth": {
            "interactive": depth.interactive,
            "standard": depth.standard,
            "batch": depth.batch,
            "leased": depth.leased,
        },
        "dead_letter_count": depth.dead,
    })))
}
