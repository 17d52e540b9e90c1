//! Operator and client control: cancel, retry, dead letters, the periodic sweep, and
//! retention.

use std::collections::BTreeMap;

use super::submit::not_found;
use super::{Engine, EngineError, rules};
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, JobId, Lease, QueueEntry, Status, Task, TaskRef, Timestamp,
};

/// What one sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    /// Leases that ran out and went back to the queue.
    pub requeued: usize,
    /// Leases that ran out on their last allowed attempt.
    pub dead_lettered: usize,
    /// Outbox entries moved to the queue.
    pub relayed: usize,
    /// Ready tasks the queue had lost, enqueued again.
    pub reconciled: usize,
}

/// Jobs one reconciliation looks at; the rest wait for the next.
const RECONCILE_BATCH: usize = 500;

impl Engine {
    /// Cancels a job: queued tasks stop at once, running workers hear on their next heartbeat.
    /// Canceling a canceled job is accepted and changes nothing.
    ///
    /// # Errors
    /// `NotFound`, `Conflict` for a job that already completed or failed, and backend failures.
    #[tracing::instrument(level = "info", skip_all, name = "engine.cancel", fields(job_id = %id))]
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
    #[tracing::instrument(level = "info", skip_all, name = "engine.retry", fields(job_id = %id))]
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
        self.metrics.dead_letters_requeued(requeued.len());
        Ok(requeued)
    }

    /// Requeues expired leases, relays the outbox and, every quarter of
    /// `reconcile_after`, reconciles. Run periodically by every deployment (the local
    /// server's loop, the serverless sweeper); safe to run concurrently.
    ///
    /// # Errors
    /// Backend failures; whatever was not done is picked up by the next sweep.
    #[tracing::instrument(level = "debug", skip_all, name = "engine.sweep")]
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
        self.metrics.expired(report.requeued, report.dead_lettered);
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
        if self.reconcile_due(now) {
            report.reconciled = self.reconcile().await?;
        }
        if report.relayed > 0 || report.reconciled > 0 {
            self.work_ready.notify_waiters();
        }
        Ok(report)
    }

    /// Retention: deletes up to `limit` terminal jobs that finished before `before`, with
    /// their tasks and the rows that belong to them (a job still owing a webhook delivery is
    /// kept), and returns their ids: the caller deletes their artifacts, which the engine
    /// does not hold. The audit log is never pruned.
    ///
    /// # Errors
    /// Store failures; nothing of a job is half deleted.
    #[tracing::instrument(level = "debug", skip_all, name = "engine.prune")]
    pub async fn prune(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, EngineError> {
        Ok(self.backends.jobs.prune_finished(before, limit).await?)
    }

    /// Whether a reconciliation is due at `now`; if so, records it as done.
    fn reconcile_due(&self, now: Timestamp) -> bool {
        let mut last = self
            .last_reconcile
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.is_none_or(|at| now - at >= self.config.reconcile_after / 4);
        if due {
            *last = Some(now);
        }
        due
    }

    /// Repairs what an external queue lost (a Redis restarted without persistence, a
    /// flushed key), for tasks that have waited `reconcile_after`: a ready task the queue no
    /// longer holds is enqueued again; a running task whose lease ran out long ago and that
    /// the queue no longer holds (so its expiry would never come) is expired as the queue
    /// would have: requeued, or failed on its last attempt. A task that moved on meanwhile
    /// gets a stray entry, which its claim finds stale and drops. Returns how many tasks it
    /// repaired.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn reconcile(&self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let before = now - self.config.reconcile_after;
        let ids = self
            .backends
            .jobs
            .stale_jobs(before, RECONCILE_BATCH)
            .await?;
        let mut ready = Vec::new();
        let mut overdue = Vec::new();
        for id in &ids {
            let Some(record) = self.backends.jobs.load_job(id).await? else {
                continue;
            };
            ready.extend(rules::ready_entries(&record, now));
            overdue.extend(
                record
                    .tasks
                    .iter()
                    .filter_map(|t| overdue_lease(t, before, now)),
            );
        }
        let tasks: Vec<TaskRef> = ready
            .iter()
            .map(QueueEntry::task_ref)
            .chain(overdue.iter().map(|e| e.lease.entry.task_ref()))
            .collect();
        let mut held = self.backends.queue.holds(&tasks).await?.into_iter();
        let lost_ready: Vec<QueueEntry> = ready
            .into_iter()
            .filter(|_| held.next() == Some(false))
            .collect();
        let lost_running: Vec<Expired> = overdue
            .into_iter()
            .filter(|_| held.next() == Some(false))
            .collect();
        let repaired = lost_ready.len() + lost_running.len();
        if repaired > 0 {
            tracing::warn!(
                ready = lost_ready.len(),
                running = lost_running.len(),
                "the queue had lost tasks; repairing"
            );
        }
        let mut requeue = lost_ready;
        if !lost_running.is_empty() {
            let mut by_job: BTreeMap<JobId, Vec<&Expired>> = BTreeMap::new();
            for e in &lost_running {
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
            requeue.extend(
                lost_running
                    .into_iter()
                    .filter(|e| e.outcome == ExpiryOutcome::Requeued)
                    .map(|e| e.lease.entry),
            );
        }
        if !requeue.is_empty() {
            self.backends.queue.enqueue(&requeue).await?;
        }
        Ok(repaired)
    }
}

/// The expiry a running task's lease would have had by now, if it ran out before `before`.
fn overdue_lease(task: &Task, before: Timestamp, now: Timestamp) -> Option<Expired> {
    let expires_at = task.lease_expires.filter(|at| *at < before)?;
    if task.status != Status::Running {
        return None;
    }
    Some(Expired {
        lease: Lease {
            entry: rules::entry_for(task, now),
            lease_id: task.lease_id.clone()?,
            worker_id: task.worker_id.clone(),
            expires_at,
        },
        outcome: if task.attempt >= task.max_attempts() {
            ExpiryOutcome::DeadLettered
        } else {
            ExpiryOutcome::Requeued
        },
    })
}
