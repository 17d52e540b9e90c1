//! `GET /v1/jobs/{id}/webhooks`: a job's webhook deliveries with every attempt.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use splai_shared::domain::{JobId, WebhookDelivery};

use super::{AppState, job_id, visible_job};
use crate::auth::Caller;
use crate::error::ApiError;

/// A job's deliveries, oldest first.
#[derive(Debug, Serialize)]
pub struct WebhookList {
    job_id: JobId,
    deliveries: Vec<WebhookDelivery>,
}

/// The deliveries of a job the caller may see (404 otherwise, as for the job itself).
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
