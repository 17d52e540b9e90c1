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
use splai_shared::artifacts::{ArtifactStore, UploadSigner};
use splai_shared::domain::{Job, JobId};
use splai_shared::engine::{Engine, EngineError};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Event streams end after their snapshot, for the client to reconnect (as `EventSource`
    /// does by itself) or poll: where a response cannot stay open, and where events from
    /// other instances never reach this one (a Lambda function).
    pub snapshot_streams: bool,
    /// API tokens (`SPLAI_API_TOKENS` and roles); `None` means auth is off.
    pub auth: Option<Arc<Tokens>>,
    /// Webhook destination rules and secrets, checked at submit (`SPLAI_WEBHOOK_*`).
    pub webhooks: Arc<crate::webhooks::WebhookConfig>,
}

/// The gateway's routes, each with the permission it needs (see [`Permission`] for the scopes
/// that satisfy each) and its OpenAPI operation. This table is the one place routes are
/// authorised and documented; health is open.
pub fn routes(tokens: Option<Arc<Tokens>>) -> OpenApiRouter<AppState> {
    use Permission as P;
    let g = auth::guarded(tokens);
    OpenApiRouter::new()
        .routes(g(P::JobSubmit, routes!(jobs::submit)))
        .routes(g(P::JobRead, routes!(jobs::list)))
        .routes(g(P::JobSubmit, routes!(jobs::submit_batch)))
        .routes(g(P::JobRead, routes!(jobs::get)))
        .routes(g(P::JobCancel, routes!(jobs::cancel)))
        .routes(g(P::JobSubmit, routes!(jobs::retry)))
        .routes(g(P::JobRead, routes!(tasks::list)))
        .routes(g(P::OutputRead, routes!(tasks::output)))
        .routes(g(P::JobRead, routes!(stream::stream)))
        .routes(g(P::JobRead, routes!(webhooks::list)))
        .routes(g(P::Operator, routes!(workers::list)))
        .routes(g(P::TaskReport, routes!(workers::register)))
        .routes(g(P::TaskReport, routes!(workers::heartbeat)))
        .routes(g(P::TaskReport, routes!(workers::assignments)))
        .routes(g(P::TaskReport, routes!(workers::release)))
        .routes(g(P::TaskReport, routes!(reports::report)))
        .routes(g(P::TaskReport, routes!(chunks::append)))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
}

/// The gateway router over `state`.
pub fn router(state: AppState) -> Router {
    let (router, _) = routes(state.auth.clone()).split_for_parts();
    router.with_state(state)
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
