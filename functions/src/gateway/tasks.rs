//! `GET /v1/jobs/{id}/tasks` and a task's output artifact.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use splai_shared::artifacts::{ArtifactError, Download};
use splai_shared::domain::{JobId, Status, Task, TaskId, WorkerId};
use splai_shared::store::TaskFilter;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, check_job, job_id};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::openapi::{Binary, ErrorBody};

/// Query of the task listing: exact-match filters and non-negative paging, as the original.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTasksQuery {
    /// Only tasks in this status.
    status: Option<Status>,
    /// Only tasks leased to this worker.
    worker_id: Option<WorkerId>,
    /// Page size; 0 or none for all.
    limit: Option<u32>,
    /// Tasks to skip.
    offset: Option<u32>,
}

/// The task listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    job_id: JobId,
    total: u64,
    returned: usize,
    limit: u32,
    offset: u32,
    tasks: Vec<Task>,
}

/// A job's tasks in planning order. `limit` 0 or absent means all.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/tasks",
    operation_id = "list_tasks",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job"), ListTasksQuery),
    responses(
        (status = 200, description = "The job's tasks", body = TaskList),
        (status = 400, description = "An invalid query", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ListTasksQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let id = job_id(id)?;
    check_job(&s, &caller, &id).await?;
    let (limit, offset) = (q.limit.unwrap_or(0), q.offset.unwrap_or(0));
    let filter = TaskFilter {
        status: q.status,
        worker_id: q.worker_id,
        limit: (limit > 0).then_some(limit),
        offset,
    };
    let page = s.engine.list_tasks(&id, &filter).await?;
    Ok(Json(TaskList {
        job_id: id,
        total: page.total,
        returned: page.tasks.len(),
        limit,
        offset,
        tasks: page.tasks,
    }))
}

/// The output of a completed task: an inline output as JSON; otherwise from the artifact
/// store (bytes, or a redirect to a URL the store hands out); an http(s) output URI is
/// redirected to as is.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/tasks/{task_id}/output",
    operation_id = "get_task_output",
    tag = "jobs",
    params(
        ("id" = JobId, Path, description = "The job"),
        ("task_id" = TaskId, Path, description = "The task"),
    ),
    responses(
        (status = 200, description = "The output: inline JSON, or the artifact's bytes with its MIME type",
         content((serde_json::Value = "application/json"), (Binary = "*/*"))),
        (status = 307, description = "The artifact is at this (presigned) URL",
         headers(("location" = String, description = "Where to download it"))),
        (status = 404, description = "No such job or task, or no output yet", body = ErrorBody),
    )
)]
pub async fn output(
    State(s): State<AppState>,
    caller: Caller,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(id)?;
    check_job(&s, &caller, &id).await?;
    let record = s.engine.job_record(&id).await?;
    let task_id = TaskId::parse(task_id.clone())
        .map_err(|_| ApiError::not_found(format!("task {task_id} not found")))?;
    let task = record
        .task(&task_id)
        .ok_or_else(|| ApiError::not_found(format!("task {task_id} not found")))?;
    let uri = task
        .output_artifact_uri
        .as_deref()
        .ok_or_else(|| ApiError::not_found(format!("task {task_id} has no output yet")))?;
    if let Some(inline) = &task.output {
        return Ok(Json(inline).into_response());
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(Redirect::temporary(uri).into_response());
    }
    let download = s.artifacts.open(uri).await.map_err(|e| match e {
        ArtifactError::Unavailable(_) => ApiError::from(e),
        other => ApiError::not_found(format!(
            "output of task {task_id} is not available: {other}"
        )),
    })?;
    let mime = task
        .output_artifact
        .as_ref()
        .map_or("application/octet-stream", |a| a.mime_type.as_str())
        .to_owned();
    Ok(match download {
        Download::Redirect(url) => Redirect::temporary(&url).into_response(),
        Download::Bytes { body, size } => {
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, mime)],
                Body::from_stream(body),
            )
                .into_response();
            if let Some(n) = size {
                resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
            }
            resp
        }
    })
}
