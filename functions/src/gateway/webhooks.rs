//! `GET /v1/jobs/{id}/webhooks`: a job's webhook deliveries with every attempt.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use splai_shared::domain::{JobId, WebhookDelivery};
use utoipa::ToSchema;

use super::{AppState, job_id, visible_job};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::ErrorBody;

/// A job's deliveries, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    job_id: JobId,
    deliveries: Vec<WebhookDelivery>,
}

/// The deliveries of a job the caller may see (404 otherwise, as for the job itself).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/webhooks",
    operation_id = "list_job_webhooks",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job")),
    responses(
        (status = 200, description = "The job's webhook deliveries and their attempts", body = WebhookList),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookList>, ApiError> {
    let id = job_id(id)?;
    visible_job(&s, &caller, &id).await?;
    let deliveries = s
        .engine
        .backends()
        .webhooks
        .job_webhooks(&id)
        .await
        .map_err(splai_shared::engine::EngineError::from)?;
    Ok(Json(WebhookList {
        job_id: id,
        deliveries,
    }))
}
