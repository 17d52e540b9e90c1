//! `GET /v1/jobs/{id}/tasks` and a task's output artifact.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use splai_shared::domain::{JobId, Status, Task, TaskId, WorkerId};
use splai_shared::store::TaskFilter;

use super::{AppState, job_id};
use crate::error::ApiError;
use crate::extract::QueryParams;

/// Query of the task listing: exact-match filters and non-negative paging, as the original.
#[derive(Debug, Deserialize)]
pub struct ListTasksQuery {
    status: Option<Status>,
    worker_id: Option<WorkerId>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// The task listing.
#[derive(Debug, Serialize)]
pub struct TaskList {
    job_id: JobId,
    total: u64,
    returned: usize,
    limit: u32,
    offset: u32,
    tasks: Vec<Task>,
}

/// A job's tasks in planning order. `limit` 0 or absent means all.
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<ListTasksQuery>,
) -> Result<Json<TaskList>, ApiError> {
    let id = job_id(id)?;
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

/// The output of a completed task: local artifacts are streamed, remote URLs redirected.
pub async fn output(
    State(s): State<AppState>,
    Path((id, task_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = s.engine.job_record(&job_id(id)?).await?;
    let task_id = TaskId::parse(task_id.clone())
        .map_err(|_| ApiError::not_found(format!("task {task_id} not found")))?;
    let task = record
        .task(&task_id)
        .ok_or_else(|| ApiError::not_found(format!("task {task_id} not found")))?;
    let uri = task
        .output_artifact_uri
        .as_deref()
        .ok_or_else(|| ApiError::not_found(format!("task {task_id} has no output yet")))?;
    if uri.starts_with("http://") || uri.starts_with("https://") {
        return Ok(Redirect::temporary(uri).into_response());
    }
    let path = splai_shared::artifacts::local_path(&s.artifact_root, uri).map_err(|e| {
        ApiError::not_found(format!("output of task {task_id} is not downloadable: {e}"))
    })?;
    let file = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::not_found(format!(
            "output of task {task_id} is missing from the artifact store"
        ))
    })?;
    let body = Body::from_stream(tokio_util_stream(file));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures::stream::try_unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((axum::body::Bytes::from(buf), f)))
    })
}
