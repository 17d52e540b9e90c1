//! Applying workers' reports, many at a time.

use serde::Serialize;

use super::metrics::NackReason;
use super::rules::{self, Report, ReportOutcome};
use super::{Engine, EngineError};
use crate::domain::{TaskRef, TaskType, Timestamp, WorkerId};

/// What the metrics need to know about a reported task, read before the report applies.
#[derive(Debug, Clone)]
struct Facts {
    worker: Option<WorkerId>,
    task_type: TaskType,
    started_at: Option<Timestamp>,
}

/// The outcome of one report, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReportResult {
    /// The task reported on.
    #[serde(flatten)]
    pub task: TaskRef,
    /// `completed`, `retrying`, `failed`, `duplicate`, `stale` or `not_found`.
    pub outcome: &'static str,
    /// Whether the report changed anything.
    pub applied: bool,
}

impl Engine {
    /// Applies reports, committing all of them in as few store transactions as the backend
    /// allows. Repeated, stale and late reports are accepted and change nothing.
    ///
    /// # Errors
    /// Backend failures (then none of the reports in the failed transaction took effect).
    #[tracing::instrument(level = "info", skip_all, name = "engine.report", fields(reports = reports.len()))]
    pub async fn report(&self, reports: &[Report]) -> Result<Vec<ReportResult>, EngineError> {
        let now = self.clock.now();
        let (base, max) = (self.config.retry_base, self.config.retry_max);
        let results = self
            .update_each(
                reports,
                |r| &r.task.job_id,
                (ReportOutcome::NotFound, None),
                |record, report, fx| {
                    let facts = record.task(&report.task.task_id).map(|t| Facts {
                        worker: t.worker_id.clone(),
                        task_type: t.task_type,
                        started_at: t.started_at,
                    });
                    let retry_at =
                        |attempt| now + rules::backoff(attempt, base, max, rand::random());
                    let o = rules::apply_report(record, report, now, retry_at, fx);
                    (o, facts)
                },
            )
            .await?;
        Ok(reports
            .iter()
            .zip(results)
            .map(|(r, (o, facts))| {
                if let Some(f) = &facts {
                    self.count_report(r, &o, f, now);
                }
                let (outcome, applied) = match o {
                    ReportOutcome::Completed => ("completed", true),
                    ReportOutcome::Retrying { .. } => ("retrying", true),
                    ReportOutcome::Failed => ("failed", true),
                    ReportOutcome::Duplicate => ("duplicate", false),
                    ReportOutcome::Stale => ("stale", false),
                    ReportOutcome::NotFound => ("not_found", false),
                };
                ReportResult {
                    task: r.task.clone(),
                    outcome,
                    applied,
                }
            })
            .collect())
    }

    /// Counts one applied (or ignored) report: the ack or nack it caused and the attempt's
    /// run time.
    fn count_report(&self, r: &Report, o: &ReportOutcome, f: &Facts, now: Timestamp) {
        let m = &self.metrics;
        let worker = f.worker.as_ref().map_or("unknown", WorkerId::as_str);
        let task_type = f.task_type.as_str();
        let ran = |outcome| {
            if let Some(at) = f.started_at {
                m.task_ran(task_type, outcome, at, now);
            }
        };
        match o {
            ReportOutcome::Completed => {
                m.acked(worker, 1);
                ran("completed");
            }
            ReportOutcome::Retrying { .. } => {
                m.nacked(worker, NackReason::Retryable);
                ran("failed");
            }
            ReportOutcome::Failed => {
                let reason = if r.retryable {
                    NackReason::Exhausted
                } else {
                    NackReason::Permanent
                };
                m.nacked(worker, reason);
                ran("failed");
            }
            ReportOutcome::Duplicate | ReportOutcome::Stale => {
                m.acked(worker, 1);
                m.report_ignored(matches!(o, ReportOutcome::Duplicate));
            }
            ReportOutcome::NotFound => {}
        }
    }
}
