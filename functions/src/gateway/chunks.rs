//! `POST /v1/tasks/{job}/{task}/chunks`: a worker sends pieces of a running task's output
//! (model tokens) under its lease, for clients waiting on the job with `stream=true`.
//!
//! The chunks are appended to the store, the meeting point of every gateway instance, so a
//! client connected to another instance sees them too; this instance's relays are also woken
//! at once. A lease that is no longer the task's current one gets 409 and changes nothing.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use splai_shared::domain::{LeaseId, TaskId, TaskRef};

use super::{AppState, check_job, job_id};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// Most chunks one request may carry (a worker sends what accumulated since its last request).
const MAX_CHUNKS: usize = 10_000;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct ChunksRequest {
    lease_id: LeaseId,
    #[serde(default)]
    first_seq: u32,
    chunks: Vec<String>,
}

/// Appends the chunks: 200 `{accepted, count}`, or 409 when the lease is not current.
pub async fn append(
    State(s): State<AppState>,
    caller: Caller,
    Path((job, task)): Path<(String, String)>,
    JsonBody(req): JsonBody<ChunksRequest>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "accepted": true, "count": req.chunks.len() })))
}
