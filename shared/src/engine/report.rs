//! Applying workers' reports, many at a time.

use serde::Serialize;

use super::rules::{self, Report, ReportOutcome};
use super::{Engine, EngineError, metrics};
use crate::domain::TaskRef;

/// The outcome of one report, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
                ReportOutcome::NotFound,
                |record, report, fx| {
                    let retry_at =
                        |attempt| now + rules::backoff(attempt, base, max, rand::random());
                    rules::apply_report(record, report, now, retry_at, fx)
                },
            )
            .await?;
        let c = &self.counters;
        Ok(reports
            .iter()
            .zip(results)
            .map(|(r, o)| {
                let (outcome, applied) = match o {
                    ReportOutcome::Completed => ("completed", true),
                    ReportOutcome::Retrying { .. } => ("retrying", true),
                    ReportOutcome::Failed => ("failed", true),
                    ReportOutcome::Duplicate => {
                        metrics::add(&c.reports_duplicate_total, 1);
                        ("duplicate", false)
                    }
                    ReportOutcome::Stale => {
                        metrics::add(&c.reports_stale_total, 1);
                        ("stale", false)
                    }
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
}
