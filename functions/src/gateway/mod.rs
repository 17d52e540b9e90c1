//! The gateway router: jobs, tasks, workers, reports, streamed task output, the event stream
//! and health. (The metrics routes live in the admin router.)

mod chunks;
mod health;
pub(crate) mod jobs;
mod reports;
mod stream;
mod tasks;
mod webhooks;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::routing::{delete, get, post};
use splai_shared::artifacts::{ArtifactStore, UploadSigner};
use splai_shared::domain::{Job, JobId};
use splai_shared::engine::{Engine, EngineError};

use crate::auth::{self, Caller, Permission, TenantAccess, Tokens};
use crate::error::ApiError;

/// What every gateway handler can reach. Built once at start-up.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Where task outputs are read from (`SPLAI_ARTIFACT_BACKEND`, `SPLAI_ARTIFACT_ROOT`).
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Presigns an output upload URL for each assignment (`SPLAI_ARTIFACT_UPLOAD=presigned`);
    /// `None` leaves workers to write to their own artifact store.
    pub upload_signer: Option<Arc<dyn UploadSigner>>,
    /// Largest output a report may carry inline (`SPLAI_MAX_INLINE_OUTPUT_BYTES`).
    pub max_inline_output_bytes: usize,
    /// Turns `true` when the server starts shutting down; open event streams end then.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// API tokens (`SPLAI_API_TOKENS` and roles); `None` means auth is off.
    pub auth: Option<Arc<Tokens>>,
    /// Webhook destination rules and secrets, checked at submit (`SPLAI_WEBHOOK_*`).
    pub webhooks: Arc<crate::webhooks::WebhookConfig>,
}

/// The gateway's routes, each with the permission it needs (see [`Permission`] for the scopes
/// that satisfy each). This table is the one place routes are authorised; health is open.
pub fn router(state: AppState) -> Router {
    use Permission as P;
    let g = auth::guarded(state.auth.clone());
    Router::new()
        .route(
            "/v1/jobs",
            g(P::JobSubmit, post(jobs::submit)).merge(g(P::JobRead, get(jobs::list))),
        )
        .route("/v1/jobs/batch", g(P::JobSubmit, post(jobs::submit_batch)))
        .route(
            "/v1/jobs/{id}",
            g(P::JobRead, get(jobs::get)).merge(g(P::JobCancel, delete(jobs::cancel))),
        )
        .route("/v1/jobs/{id}/retry", g(P::JobSubmit, post(jobs::retry)))
        .route("/v1/jobs/{id}/tasks", g(P::JobRead, get(tasks::list)))
        .route(
            "/v1/jobs/{id}/tasks/{task_id}/output",
            g(P::OutputRead, get(tasks::output)),
        )
        .route("/v1/jobs/{id}/stream", g(P::JobRead, get(stream::stream)))
        .route("/v1/jobs/{id}/webhooks", g(P::JobRead, get(webhooks::list)))
        .route("/v1/workers", g(P::Operator, get(workers::list)))
        .route(
            "/v1/workers/register",
            g(P::TaskReport, post(workers::register)),
        )
        .route(
            "/v1/workers/{id}/heartbeat",
            g(P::TaskReport, post(workers::heartbeat)),
        )
        .route(
            "/v1/workers/{id}/assignments",
            g(P::TaskReport, get(workers::assignments)),
        )
        .route(
            "/v1/workers/{id}/release",
            g(P::TaskReport, post(workers::release)),
        )
        .route("/v1/tasks/report", g(P::TaskReport, post(reports::report)))
        .route(
            "/v1/tasks/{job}/{task}/chunks",
            g(P::TaskReport, post(chunks::append)),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// A job the caller may see, or 404 as if it did not exist: a tenant-scoped token learns
/// nothing about other tenants' job ids.
async fn visible_job(s: &AppState, caller: &Caller, id: &JobId) -> Result<Job, ApiError> {
    let not_found = || ApiError::not_found(format!("job {id} not found"));
    let job = s.engine.job(id).await.map_err(|e| match e {
        EngineError::NotFound(_) => not_found(),
        other => other.into(),
    })?;
    if caller.may_act_in(&job.tenant) {
        Ok(job)
    } else {
        Err(not_found())
    }
}

/// Checks that the caller may act on the job, loading it only for tenant-scoped callers.
async fn check_job(s: &AppState, caller: &Caller, id: &JobId) -> Result<(), ApiError> {
    if caller.tenants() != TenantAccess::All {
        visible_job(s, caller, id).await?;
    }
    Ok(())
}

/// A job id from the path. An id that cannot exist is simply not found.
fn job_id(raw: String) -> Result<JobId, ApiError> {
    JobId::parse(raw.clone()).map_err(|_| ApiError::not_found(format!("job {raw} not found")))
}
