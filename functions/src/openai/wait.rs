//! Waiting for a job an OpenAI request submitted: its final record, or the deadline; and the
//! guard that cancels the job when nobody waits for it any more (the client disconnected,
//! or the deadline passed).
//!
//! The wait follows the engine's job events, so a job finished in this process is seen at
//! once. Events are published by the process that applied the change, though, and a worker's
//! report may reach another gateway instance; so the store is also read every
//! [`RECHECK`], which bounds how late such a job is noticed.

use std::sync::Arc;
use std::time::Duration;

use splai_shared::domain::{JobId, JobRecord, TaskId};
use splai_shared::engine::{Engine, EngineError, JobEvent};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::gateway::AppState;

/// How often a waiting request re-reads its job from the store (see the module docs).
pub const RECHECK: Duration = Duration::from_secs(1);

/// Cancels its job when dropped while armed.
pub struct CancelOnDrop {
    engine: Arc<Engine>,
    job: Option<JobId>,
}

impl CancelOnDrop {
    /// A guard for `job`.
    pub fn new(engine: Arc<Engine>, job: JobId) -> Self {
        Self {
            engine,
            job: Some(job),
        }
    }

    /// The job finished (or its answer was sent): nothing to cancel.
    pub fn disarm(&mut self) {
        self.job = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else { return };
        let engine = self.engine.clone();
        // Drop cannot await; the cancel is one store update and needs no caller.
        tokio::spawn(async move {
            match engine.cancel(&job).await {
                Ok(()) => tracing::info!(%job, "waiting OpenAI client went away; job canceled"),
                // Finished meanwhile: nothing to stop.
                Err(EngineError::Conflict(_)) => {}
                Err(e) => tracing::warn!(%job, error = %e, "canceling an abandoned job failed"),
            }
        });
    }
}

/// Whether `ev` says that job `id` finished.
pub fn finishes(ev: &JobEvent, id: &JobId) -> bool {
    ev.job_id() == id && ev.is_terminal()
}

/// Waits for job `id` to finish, until `deadline`. `events` must have been subscribed before
/// the job was submitted, so its end cannot slip by. `None` at the deadline.
///
/// # Errors
/// Store failures.
pub async fn until_finished(
    engine: &Engine,
    events: &mut Receiver<Arc<JobEvent>>,
    id: &JobId,
    deadline: Instant,
) -> Result<Option<JobRecord>, EngineError> {
    loop {
        let record = engine.job_record(id).await?;
        if record.job.status.is_terminal() {
            return Ok(Some(record));
        }
        let recheck = (Instant::now() + RECHECK).min(deadline);
        loop {
            match tokio::time::timeout_at(recheck, events.recv()).await {
                Ok(Ok(ev)) if finishes(&ev, id) => break,
                Ok(Ok(_)) => {}
                // Missed events, or no more: read the store.
                Ok(Err(RecvError::Lagged(_) | RecvError::Closed)) | Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            let record = engine.job_record(id).await?;
            return Ok(record.job.status.is_terminal().then_some(record));
        }
    }
}

/// The output of finished task `task`: inline, or read from the artifact store.
///
/// # Errors
/// 500 when the output is missing or unreadable.
pub async fn output_of(
    s: &AppState,
    record: &JobRecord,
    task: &str,
) -> Result<serde_json::Value, ApiError> {
    let id = TaskId::parse(task).map_err(|e| ApiError::internal(&e))?;
    let t = record
        .task(&id)
        .ok_or_else(|| ApiError::internal(&format!("job has no task {task}")))?;
    if let Some(inline) = &t.output {
        return Ok(inline.to_value());
    }
    let uri = t
        .output_artifact_uri
        .as_deref()
        .ok_or_else(|| ApiError::internal(&format!("task {task} completed without output")))?;
    let bytes = s.artifacts.get(uri).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(&e))
}

/// Why a finished job gave no answer: the first task error, or its status.
pub fn failure(record: &JobRecord) -> String {
    let error = record.tasks.iter().find_map(|t| t.error.clone());
    match error {
        Some(e) => format!(
            "job {} {}: {e}",
            record.job.job_id,
            record.job.status.as_str().to_lowercase()
        ),
        None => format!(
            "job {} was {}",
            record.job.job_id,
            record.job.status.as_str().to_lowercase()
        ),
    }
}
