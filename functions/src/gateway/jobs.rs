//! `POST/GET /v1/jobs`, `GET/DELETE /v1/jobs/{id}`, `POST /v1/jobs/{id}/retry`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use splai_shared::domain::{
    IdempotencyKey, Job, NewJob, PlannerMode, Priority, Status, TaskSpec, TenantId,
};
use splai_shared::store::JobFilter;

use super::{AppState, job_id};
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};

/// The submit body, as the original API defines it plus the new fields.
#[derive(Debug, Deserialize)]
pub struct SubmitJobRequest {
    tenant: Option<TenantId>,
    #[serde(rename = "type")]
    job_type: String,
    #[serde(default)]
    input: Value,
    policy: Option<String>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    planner_mode: PlannerMode,
    model: Option<String>,
    latency_class: Option<String>,
    #[serde(default)]
    reasoning_required: bool,
    data_classification: Option<String>,
    network_isolation: Option<String>,
    webhook_url: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    tasks: Option<Vec<TaskSpec>>,
}

impl SubmitJobRequest {
    /// Validates what serde cannot and resolves the tenant and idempotency key from headers.
    fn into_new_job(self, headers: &HeaderMap) -> Result<NewJob, ApiError> {
        if self.job_type.trim().is_empty() {
            return Err(ApiError::invalid("field `type` must not be empty"));
        }
        if let Some(url) = &self.webhook_url {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(ApiError::invalid(format!(
                    "field `webhook_url` must be an http(s) URL, got `{url}`"
                )));
            }
        }
        let tenant = match self.tenant {
            Some(t) => Some(t),
            None => header(headers, "x-splai-tenant")?
                .map(TenantId::parse)
                .transpose()
                .map_err(|e| ApiError::invalid(format!("header X-SPLAI-Tenant: {e}")))?,
        };
        let idempotency_key = header(headers, "idempotency-key")?
            .map(IdempotencyKey::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("header Idempotency-Key: {e}")))?;
        Ok(NewJob {
            tenant,
            job_type: self.job_type,
            input: self.input,
            policy: self.policy,
            priority: self.priority,
            planner_mode: self.planner_mode,
            model: self.model,
            latency_class: self.latency_class,
            reasoning_required: self.reasoning_required,
            data_classification: self.data_classification,
            network_isolation: self.network_isolation,
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            tasks: self.tasks,
            idempotency_key,
        })
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid(format!("header {name} must be visible ASCII")))
        })
        .transpose()
}

/// Submits a job: 202 with its id, or 200 with the first job's id for a repeated key.
pub async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Response, ApiError> {
    let new = req.into_new_job(&headers)?;
    let done = s.engine.submit(new).await?;
    let body = Json(json!({ "job_id": done.job_id }));
    Ok(if done.replayed {
        (StatusCode::OK, [("idempotent-replayed", "true")], body).into_response()
    } else {
        (StatusCode::ACCEPTED, body).into_response()
    })
}

/// One job.
pub async fn get(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(s.engine.job(&job_id(id)?).await?))
}

/// Cancels a job.
pub async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.engine.cancel(&job_id(id)?).await?;
    Ok(Json(json!({ "accepted": true })))
}

/// Re-runs a failed or canceled job.
pub async fn retry(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = job_id(id)?;
    s.engine.retry(&id).await?;
    Ok(Json(json!({ "accepted": true, "job_id": id })))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
pub struct ListJobsQuery {
    status: Option<Status>,
    tenant: Option<TenantId>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize)]
pub struct JobList {
    jobs: Vec<Job>,
    next_cursor: Option<String>,
}

/// Most jobs one page may hold.
const MAX_PAGE: u32 = 500;

/// Lists jobs, newest first.
pub async fn list(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ListJobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "query `limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let filter = JobFilter {
        status: q.status,
        tenant: q.tenant,
        job_type: q.job_type,
        limit,
        cursor: q.cursor,
    };
    let page = s.engine.list_jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: page.jobs,
        next_cursor: page.next_cursor,
    }))
}
