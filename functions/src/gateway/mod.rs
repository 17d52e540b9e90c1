//! The gateway router: jobs, tasks, workers, reports, the event stream and health.

mod health;
mod jobs;
mod reports;
mod stream;
mod tasks;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use splai_shared::artifacts::ArtifactStore;
use splai_shared::domain::JobId;
use splai_shared::engine::Engine;

use crate::error::ApiError;

/// What every gateway handler can reach. Built once at start-up.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Where task outputs are read from (`SPLAI_ARTIFACT_BACKEND`, `SPLAI_ARTIFACT_ROOT`).
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Largest output a report may carry inline (`SPLAI_MAX_INLINE_OUTPUT_BYTES`).
    pub max_inline_output_bytes: usize,
    /// Turns `true` when the server starts shutting down; open event streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/tasks", get(tasks::list))
        .route("/v1/jobs/{id}/tasks/{task_id}/output", get(tasks::output))
        .route("/v1/jobs/{id}/stream", get(stream::stream))
        .route("/v1/workers", get(workers::list))
        .route("/v1/workers/register", post(workers::register))
        .route("/v1/workers/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/workers/{id}/assignments", get(workers::assignments))
        .route("/v1/workers/{id}/release", post(workers::release))
        .route("/v1/tasks/report", post(reports::report))
        .route("/v1/metrics", get(health::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// A job id from the path. An id that cannot exist is simply not found.
fn job_id(raw: String) -> Result<JobId, ApiError> {
    JobId::parse(raw.clone()).map_err(|_| ApiError::not_found(format!("job {raw} not found")))
}
