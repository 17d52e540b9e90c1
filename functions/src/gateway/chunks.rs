//! `POST /v1/tasks/{job}/{task}/chunks`: a worker sends pieces of a running task's output
//! (model tokens) under its lease, for clients waiting on the job with `stream=true`.
//!
//! The chunks are appended to the store, the meeting point of every gateway instance, so a
//! client connected to another instance sees them too; this instance's relays are also woken
//! at once. A lease that is no longer the task's current one gets 409 and changes nothing.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use splai_shared::domain::{JobId, LeaseId, TaskId, TaskRef};
use utoipa::ToSchema;

use super::{AppState, check_job, job_id};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::ErrorBody;

/// Most chunks one request may carry (a worker sends what accumulated since its last request).
const MAX_CHUNKS: usize = 10_000;

/// The request body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChunksRequest {
    /// The lease the task runs under.
    lease_id: LeaseId,
    /// The sequence number of the first chunk (default 0); repeats are ignored.
    #[serde(default)]
    first_seq: u32,
    /// Up to 10,000 chunks of output text.
    chunks: Vec<String>,
}

/// What an append answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunksAccepted {
    /// Always `true`.
    accepted: bool,
    /// Chunks received.
    count: usize,
}

/// Appends the chunks: 200 `{accepted, count}`, or 409 when the lease is not current.
#[utoipa::path(
    post,
    path = "/v1/tasks/{job}/{task}/chunks",
    operation_id = "append_chunks",
    tag = "workers",
    params(
        ("job" = JobId, Path, description = "The job"),
        ("task" = TaskId, Path, description = "The task"),
    ),
    request_body = ChunksRequest,
    responses(
        (status = 200, description = "Stored", body = ChunksAccepted),
        (status = 404, description = "No such job or task", body = ErrorBody),
        (status = 409, description = "Not the current lease of the running task", body = ErrorBody),
    )
)]
pub async fn append(
    State(s): State<AppState>,
    caller: Caller,
    Path((job, task)): Path<(String, String)>,
    JsonBody(req): JsonBody<ChunksRequest>,
) -> Result<Json<ChunksAccepted>, ApiError> {
    let job_id = job_id(job)?;
    check_job(&s, &caller, &job_id).await?;
    let task_id = TaskId::parse(task.clone())
        .map_err(|_| ApiError::not_found(format!("task {task} not found")))?;
    if req.chunks.len() > MAX_CHUNKS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_CHUNKS} chunks per request, got {}",
            req.chunks.len()
        )));
    }
    let task = TaskRef { job_id, task_id };
    let current = s
        .engine
        .append_chunks(&task, &req.lease_id, req.first_seq, &req.chunks)
        .await?;
    if !current {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            code: "conflict",
            message: format!(
                "lease {} is not the current lease of running task {task}",
                req.lease_id
            ),
        });
    }
    Ok(Json(ChunksAccepted {
        accepted: true,
        count: req.chunks.len(),
    }))
}
