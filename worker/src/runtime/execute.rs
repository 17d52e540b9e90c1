//! One attempt: run the executor under the task's soft timeout, store its output, queue the
//! report.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use serde_json::{Value, json};
use splai_shared::artifacts::{ArtifactKey, UploadUrl};
use splai_shared::domain::{Artifact, TaskType};
use splai_shared::engine::Assignment;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::registry::Stop;
use crate::client::{HeldLease, Report};
use crate::executor::TaskError;

/// How the attempt ended.
enum Outcome {
    Done(Result<Value, TaskError>),
    TimedOut(Duration),
    Stopped,
}

/// The span of one attempt: a child of the job's submit request when that was traced, so the
/// trace runs from the submit to this execution.
pub(crate) fn span(task: &Assignment) -> tracing::Span {
    let span = tracing::info_span!(
        "task.execute",
        job_id = %task.job_id,
        task_id = %task.task_id,
        task_type = task.task_type.as_str(),
        attempt = task.attempt,
    );
    splai_telemetry::set_parent(&span, task.traceparent.as_deref());
    span
}

/// Runs one claimed task to a report (or to a stop). Holds `permit` (a parallelism slot)
/// until the output is stored.
pub(crate) async fn execute(
    shared: Arc<Shared>,
    task: Assignment,
    lease: HeldLease,
    cancel: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let started_at = OffsetDateTime::now_utc();
    let _running = shared.metrics.task_started();
    let soft_timeout = Duration::from_secs(u64::from(task.timeout_sec.max(1)));
    let run = AssertUnwindSafe(shared.executors.run(&task)).catch_unwind();
    let outcome = tokio::select! {
        biased;
        () = cancel.cancelled() => Outcome::Stopped,
        r = tokio::time::timeout(soft_timeout, run) => match r {
            Err(_) => Outcome::TimedOut(soft_timeout),
            Ok(Ok(result)) => Outcome::Done(result),
            Ok(Err(panic)) => Outcome::Done(Err(TaskError::Retryable(format!(
                "the executor panicked: {}",
                panic_message(&*panic)
            )))),
        },
    };
    let outcome_label = match &outcome {
        Outcome::Done(Ok(_)) => "completed",
        Outcome::Done(Err(_)) => "failed",
        Outcome::TimedOut(_) => "timed_out",
        Outcome::Stopped => "stopped",
    };
    shared
        .metrics
        .task_finished(task.task_type.as_str(), outcome_label);
    let report = match outcome {
        Outcome::Stopped => {
            match shared.registry.stop_reason(&lease) {
                // Kept in the registry for the hand-back at the end of shutdown.
                Some(Stop::HandBack) => {}
                _ => shared.registry.remove(&lease),
            }
            return;
        }
        Outcome::TimedOut(after) => Report::failed(
            &lease,
            format!(
                "timed out after {}s (the task's soft timeout, timeout_sec); the executor was \
                 stopped",
                after.as_secs()
            ),
            true,
        ),
        Outcome::Done(Ok(output)) => store_output(&shared, &task, &lease, output, started_at).await,
        Outcome::Done(Err(e)) => Report::failed(&lease, e.to_string(), e.is_retryable()),
    };
    drop(permit);
    if task.task_type == TaskType::ModelDownload && report.error.is_none() {
        // The model inventory changed: tell the scheduler.
        shared.inventory_changed.notify_one();
    }
    shared.registry.mark_reporting(&lease);
    shared.reports.send(report);
}

/// Stores the output: inline in the report when it is small enough, else in the artifact
/// store (a store failure fails the attempt, retryably).
async fn store_output(
    shared: &Shared,
    task: &Assignment,
    lease: &HeldLease,
    output: Value,
    started_at: OffsetDateTime,
) -> Report {
    let body = with_envelope(output, task, shared.worker_id.as_str(), started_at);
    let key = ArtifactKey::output(task.job_id.clone(), task.task_id.clone());
    // Encoded once, straight into the raw JSON the report carries (no re-parse to check it).
    let encoded = match serde_json::value::to_raw_value(&body) {
        Ok(b) => b,
        Err(e) => return Report::failed(lease, format!("encoding the output: {e}"), false),
    };
    let size = encoded.get().len();
    if size <= shared.max_inline.load(Ordering::Relaxed) {
        let artifact = Artifact {
            kind: "inline".to_owned(),
            url: key.uri(),
            size_bytes: size as u64,
            mime_type: "application/json".to_owned(),
            expires_at: None,
        };
        return Report::completed_inline(lease, artifact, encoded);
    }
    let encoded = String::from(Box::<str>::from(encoded));
    if let Some(upload) = &task.output_upload {
        return put_to_upload_url(shared, lease, upload, Bytes::from(encoded)).await;
    }
    match shared
        .artifacts
        .put(&key, Bytes::from(encoded), "application/json")
        .await
    {
        Ok(artifact) => Report::completed(lease, artifact),
        Err(e) => Report::failed(lease, format!("storing the output: {e}"), true),
    }
}

/// Puts the output to the upload URL of the assignment (the gateway's store), whatever this
/// worker's own artifact settings, and reports it as that store's artifact.
async fn put_to_upload_url(
    shared: &Shared,
    lease: &HeldLease,
    upload: &UploadUrl,
    body: Bytes,
) -> Report {
    let size_bytes = body.len() as u64;
    match shared.gateway.put_upload(upload, body).await {
        Ok(()) => Report::completed(
            lease,
            Artifact {
                kind: upload.kind.clone(),
                url: upload.uri.clone(),
                size_bytes,
                mime_type: "application/json".to_owned(),
                expires_at: None,
            },
        ),
        Err(e) => Report::failed(lease, format!("uploading the output: {e}"), true),
    }
}

/// Adds `_splai` (which task, which attempt, which worker, when it ran) to an object output;
/// wraps any other output as `{"result": ...}`. Aggregation skips `_`-prefixed keys.
fn with_envelope(
    output: Value,
    task: &Assignment,
    worker_id: &str,
    started_at: OffsetDateTime,
) -> Value {
    let mut obj = match output {
        Value::Object(map) => map,
        other => serde_json::Map::from_iter([("result".to_owned(), other)]),
    };
    let fmt = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    obj.insert(
        "_splai".to_owned(),
        json!({
            "job_id": task.job_id,
            "task_id": task.task_id,
            "type": task.task_type,
            "attempt": task.attempt,
            "worker_id": worker_id,
            "started_at": fmt(started_at),
            "finished_at": fmt(OffsetDateTime::now_utc()),
        }),
    );
    Value::Object(obj)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}
