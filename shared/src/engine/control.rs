//! Operator and client control: cancel, retry, dead letters, and the periodic sweep.

use std::collections::BTreeMap;

use super::submit::not_found;
use super::{Engine, EngineError, metrics, rules};
use crate::domain::{DeadLetter, Expired, JobId, Status, TaskRef};

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Leases that ran out and went back to the queue.
    pub requeued: usize,
    /// Leases that ran out on their last allowed attempt.
    pub dead_lettered: usize,
    /// Outbox entries moved to the queue.
    pub relayed: usize,
}

impl Engine {
    /// Cancels a job: queued tasks stop at once, running workers hear on their next heartbeat.
    /// Canceling a canceled job is accepted and changes nothing.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a job that already completed or failed, and backend failures.
    pub async fn cancel(&self, id: &JobId) -> Result<(), EngineError> {
        let now = self.clock.now();
        let done = self
            .update(std::slice::from_ref(id), |r, fx| {
                (rules::cancel(r, now, fx), r.job.status)
            })
            .await?;
        match done.get(id) {
            None => Err(not_found(id)),
            Some((true, _)) | Some((false, Status::Canceled)) => Ok(()),
            Some((false, status)) => Err(EngineError::Conflict(format!(
                "job {id} is already {} and cannot be canceled",
                status.as_str()
            ))),
        }
    }

    /// Re-runs a failed or canceled job's unfinished tasks with fresh attempts.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a job that is not failed or canceled, and backend failures.
    pub async fn retry(&self, id: &JobId) -> Result<(), EngineError> {
        let now = self.clock.now();
        let done = self
            .update(std::slice::from_ref(id), |r, fx| {
                (rules::revive(r, now, fx), r.job.status)
            })
            .await?;
        match done.get(id) {
            None => Err(not_found(id)),
            Some((true, _)) => Ok(()),
            Some((false, status)) => Err(EngineError::Conflict(format!(
                "job {id} is {}; only Failed or Canceled jobs can be retried",
                status.as_str()
            ))),
        }
    }

    /// Dead letters, oldest first.
    ///
    /// # Errors
    /// Queue failures.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, EngineError> {
        Ok(self.backends.queue.list_dead(limit).await?)
    }

    /// Moves dead letters back to the queue and revives their jobs. Returns the tasks that
    /// were dead letters.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn requeue_dead_letters(
        &self,
        tasks: &[TaskRef],
    ) -> Result<Vec<TaskRef>, EngineError> {
        let now = self.clock.now();
        let requeued = self.backends.queue.requeue_dead(tasks, now).await?;
        let mut jobs: Vec<JobId> = requeued.iter().map(|t| t.job_id.clone()).collect();
        jobs.dedup();
        self.update(&jobs, |r, fx| rules::revive(r, now, fx))
            .await?;
        metrics::add(&self.counters.dead_letter_requeued_total, requeued.len());
        Ok(requeued)
    }

    /// Requeues expired leases and relays the outbox. Run periodically by every deployment
    /// (the local server's loop, the serverless sweeper); safe to run concurrently.
    ///
    /// # Errors
    /// Backend failures; whatever was not done is picked up by the next sweep.
    pub async fn sweep(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock.now();
        let expired = self.backends.queue.expire(now).await?;
        let mut report = SweepReport::default();
        for e in &expired {
            match e.outcome {
                crate::domain::ExpiryOutcome::Requeued => report.requeued += 1,
                crate::domain::ExpiryOutcome::DeadLettered => report.dead_lettered += 1,
            }
        }
        metrics::add(&self.counters.queue_expired_requeued_total, report.requeued);
        metrics::add(&self.counters.dead_letter_total, report.dead_lettered);
        if !expired.is_empty() {
            let mut by_job: BTreeMap<JobId, Vec<Expired>> = BTreeMap::new();
            for e in expired {
                by_job
                    .entry(e.lease.entry.job_id.clone())
                    .or_default()
                    .push(e);
            }
            let ids: Vec<JobId> = by_job.keys().cloned().collect();
            self.update(&ids, |r, fx| {
                for e in by_job.get(&r.job.job_id).into_iter().flatten() {
                    rules::apply_expiry(r, e, now, fx);
                }
            })
            .await?;
            // Requeued entries are claimable again.
            self.work_ready.notify_waiters();
        }
        report.relayed = self.relay_outbox().await?;
        if report.relayed > 0 {
            self.work_ready.notify_waiters();
        }
        Ok(report)
    }
}
