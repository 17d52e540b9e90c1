//! `POST /v1/tasks/report`: one report, or `{"reports": [...]}` applied together.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use splai_shared::artifacts::ArtifactKey;
use splai_shared::domain::{Artifact, InlineOutput, JobId, LeaseId, Status, TaskId, TaskRef};
use splai_shared::engine::{Report, ReportResult};
use utoipa::ToSchema;

use super::{AppState, check_job};
use crate::auth::Caller;
use crate::detach::detached;
use crate::error::ApiError;
use crate::extract::parse_json;
use crate::openapi::ErrorBody;

/// One worker report.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReportRequest {
    job_id: JobId,
    task_id: TaskId,
    lease_id: LeaseId,
    /// Defaults to `<lease_id>:<status>`, which makes a plain repeat a duplicate.
    idempotency_key: Option<String>,
    status: Status,
    output_artifact_uri: Option<String>,
    output_artifact: Option<Artifact>,
    /// A small output inline (at most `max_inline_output_bytes`).
    #[schema(value_type = Option<Object>)]
    output: Option<Box<RawValue>>,
    error: Option<String>,
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

/// A batch of reports; `reports` absent means the body is a single report. Other fields are
/// ignored here, so a single report parses as "no batch" and is then read on its own.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReportBatch {
    /// Up to 1,000 reports.
    reports: Option<Vec<ReportRequest>>,
}

/// A report body: one report, or a batch.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only: `report` tells the two apart itself.
pub enum ReportBody {
    /// Several reports.
    Batch(ReportBatch),
    /// One report.
    One(Box<ReportRequest>),
}

/// What a report answers: per report, whether it was applied.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ReportAnswer {
    /// The answer to a batch: one result per report, in order.
    Batch {
        /// Always `true`.
        accepted: bool,
        results: Vec<ReportResult>,
    },
    /// The answer to one report.
    One {
        /// Always `true`.
        accepted: bool,
        /// What the report did (`applied`, `duplicate`, `stale_lease`, ...).
        outcome: &'static str,
        /// Whether it changed the task.
        applied: bool,
    },
}

/// Most reports one request may carry.
const MAX_BATCH: usize = 1000;

impl ReportRequest {
    fn into_report(self, at: &str, max_inline: usize) -> Result<Report, ApiError> {
        if !matches!(self.status, Status::Completed | Status::Failed) {
            return Err(ApiError::invalid(format!(
                "{at}`status` must be Completed or Failed"
            )));
        }
        let key = self
            .idempotency_key
            .unwrap_or_else(|| format!("{}:{}", self.lease_id, self.status.as_str()));
        // Room for the default `<lease_id>:<status>` of the longest lease id (an SQS lease).
        const MAX_KEY: usize = splai_shared::domain::MAX_LEASE_ID_LEN + 16;
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(ApiError::invalid(format!(
                "{at}`idempotency_key` must be 1 to {MAX_KEY} characters"
            )));
        }
        let task = TaskRef {
            job_id: self.job_id,
            task_id: self.task_id,
        };
        let out = output_of(
            &task,
            self.output_artifact_uri,
            self.output_artifact,
            self.output,
            at,
            max_inline,
        )?;
        Ok(Report {
            task,
            lease_id: self.lease_id,
            idempotency_key: key,
            status: self.status,
            output_artifact_uri: out.uri,
            output_artifact: out.artifact,
            output: out.value,
            error: self.error,
            retryable: self.retryable,
        })
    }
}

/// A report's output: where it is, what it is, and the value itself when inline. The URI and
/// the artifact's `url` must agree; an inline output (size-checked) the worker did not
/// describe gets the task's output URI and `inline` metadata, so downloads and dependents find
/// it like any other output.
fn output_of(
    task: &TaskRef,
    uri: Option<String>,
    artifact: Option<Artifact>,
    inline: Option<Box<RawValue>>,
    at: &str,
    max_inline: usize,
) -> Result<Output, ApiError> {
    if let (Some(uri), Some(a)) = (&uri, &artifact)
        && *uri != a.url
    {
        return Err(ApiError::invalid(format!(
            "{at}`output_artifact.url` must equal `output_artifact_uri`"
        )));
    }
    let uri = uri.or_else(|| artifact.as_ref().map(|a| a.url.clone()));
    let Some(raw) = inline else {
        return Ok(Output {
            uri,
            artifact,
            value: None,
        });
    };
    let size = raw.get().len();
    if size > max_inline {
        return Err(ApiError::invalid(format!(
            "{at}`output` is {size} bytes; outputs over {max_inline} bytes \
             (SPLAI_MAX_INLINE_OUTPUT_BYTES) must be stored as artifacts"
        )));
    }
    let uri =
        uri.unwrap_or_else(|| ArtifactKey::output(task.job_id.clone(), task.task_id.clone()).uri());
    let artifact = artifact.unwrap_or_else(|| Artifact {
        kind: "inline".to_owned(),
        url: uri.clone(),
        size_bytes: size as u64,
        mime_type: "application/json".to_owned(),
        expires_at: None,
    });
    Ok(Output {
        uri: Some(uri),
        artifact: Some(artifact),
        // Parsing the request checked it is one JSON value; it is kept as sent.
        value: Some(InlineOutput::new(raw)),
    })
}

/// A report's output, as the engine records it.
struct Output {
    uri: Option<String>,
    artifact: Option<Artifact>,
    value: Option<InlineOutput>,
}

/// Applies one report or a batch. Repeated and stale reports are accepted and change nothing.
///
/// A tenant-scoped caller gets 404 for a report on another tenant's job (the whole request).
#[utoipa::path(
    post,
    path = "/v1/tasks/report",
    operation_id = "report_tasks",
    tag = "workers",
    request_body = ReportBody,
    responses(
        (status = 200, description = "Each report applied, or recognised as a duplicate or stale", body = ReportAnswer),
        (status = 404, description = "A report's job does not exist", body = ErrorBody),
    )
)]
pub async fn report(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<ReportAnswer>, ApiError> {
    let max_inline = s.max_inline_output_bytes;
    // One parse for a batch (the hot path); a single report is read a second time.
    let batch: ReportBatch = parse_json(&body)?;
    if let Some(reports) = batch.reports {
        if reports.len() > MAX_BATCH {
            return Err(ApiError::invalid(format!(
                "at most {MAX_BATCH} reports per request"
            )));
        }
        let reports = reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.into_report(&format!("reports[{i}]: "), max_inline))
            .collect::<Result<Vec<_>, _>>()?;
        check_jobs(&s, &caller, &reports).await?;
        let results = detached(&s.engine, |e| async move { e.report(&reports).await }).await?;
        return Ok(Json(ReportAnswer::Batch {
            accepted: true,
            results,
        }));
    }
    let report = parse_json::<ReportRequest>(&body)?.into_report("", max_inline)?;
    check_jobs(&s, &caller, std::slice::from_ref(&report)).await?;
    let result = s
        .engine
        .report(std::slice::from_ref(&report))
        .await?
        .remove(0);
    Ok(Json(ReportAnswer::One {
        accepted: true,
        outcome: result.outcome,
        applied: result.applied,
    }))
}

/// Checks every distinct job the reports name (nothing to load for unscoped callers).
async fn check_jobs(s: &AppState, caller: &Caller, reports: &[Report]) -> Result<(), ApiError> {
    let jobs: std::collections::BTreeSet<&JobId> = reports.iter().map(|r| &r.task.job_id).collect();
    for id in jobs {
        check_job(s, caller, id).await?;
    }
    Ok(())
}
