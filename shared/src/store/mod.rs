//! The state seam: jobs with their tasks, workers, the dispatch outbox, and the audit log.
//!
//! A job and its tasks form one aggregate ([`JobRecord`]) that changes atomically through
//! [`JobStore::update_jobs`]: the backend loads the record, hands it to a pure engine rule, and
//! writes back whatever changed together with the queue entries the rule made ready. Where those
//! entries go is the backend's business, decided at construction ([`Dispatch`]): straight into a
//! queue that lives in the same database (one transaction), or into an outbox that the engine's
//! relay drains into an external queue. The engine cannot tell the difference.

use async_trait::async_trait;

use crate::domain::{
    AuditEvent, ChainReport, ChainWalk, DeliveryState, Heartbeat, IdempotencyKey, Job, JobId,
    JobRecord, Lease, LeaseId, NewAuditEvent, QueueEntry, Status, Task, TaskChunk, TaskRef,
    TenantId, Timestamp, WebhookAttempt, WebhookDelivery, Worker, WorkerCaps, WorkerId,
    WorkerRegistration,
};

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod diff;
#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// Errors crossing the store boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing addressed does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A uniqueness or state conflict.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend could not be reached or timed out; the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

/// Where ready queue entries go when a store transaction commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Into the queue that shares the store's database, in the same transaction.
    Direct,
    /// Into the outbox, for a relay to move to an external queue.
    Outbox,
}

/// An idempotency key claimed by a submit, stored in the same transaction as the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// Keys are scoped per tenant.
    pub tenant: TenantId,
    /// The client's key.
    pub key: IdempotencyKey,
    /// A hash of the request, to tell a true repeat from a reused key.
    pub request_hash: String,
}

/// One job of a batch submit: its record, the entries of its ready tasks, and its
/// idempotency claim.
#[derive(Debug, Clone, Copy)]
pub struct NewJobWrite<'a> {
    /// The planned job.
    pub record: &'a JobRecord,
    /// Entries for the tasks that can start now.
    pub ready: &'a [QueueEntry],
    /// The submit's idempotency key, if it had one.
    pub idempotency: Option<&'a IdempotencyClaim>,
}

/// What `create_job` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The job was written.
    Created,
    /// The idempotency key was already used; nothing was written.
    Replayed {
        /// The job created by the first request.
        job_id: JobId,
        /// The first request's hash.
        request_hash: String,
    },
}

/// Filters for listing jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobFilter {
    /// Exact status.
    pub status: Option<Status>,
    /// Exact tenant.
    pub tenant: Option<TenantId>,
    /// Exact job type.
    pub job_type: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// One page of jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<Job>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Filters for listing a job's tasks, in planning order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskFilter {
    /// Exact status.
    pub status: Option<Status>,
    /// Exact worker.
    pub worker_id: Option<WorkerId>,
    /// Page size; all when absent.
    pub limit: Option<u32>,
    /// Tasks to skip.
    pub offset: u32,
}

/// One page of tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    /// Tasks matching the filter, before paging.
    pub total: u64,
    /// The page.
    pub tasks: Vec<Task>,
}

/// A lease a worker asks to extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// The task.
    pub task: TaskRef,
    /// The lease the worker holds.
    pub lease_id: LeaseId,
}

/// A job-update rule: changes the record in place and returns what the change asks of the
/// queue.
///
/// Backends may call it more than once for the same job (an optimistic backend retries on a
/// write conflict with a freshly loaded record), so it must derive everything from the record.
pub type ApplyFn<'a> = dyn FnMut(&mut JobRecord) -> QueueWrites + Send + 'a;

/// What a job change asks of the queue, written with the change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueWrites {
    /// Entries the change made ready: dispatched as the store's [`Dispatch`] says.
    pub enqueue: Vec<QueueEntry>,
    /// Leases whose entries are done with, removed in the change's transaction. Only for a
    /// store whose [`JobStore::acks_with_changes`] is true; other stores get none (the engine
    /// acks those through the queue after the commit).
    pub ack: Vec<LeaseId>,
}

/// A rule run on each job of a claim with the job's leases from it (in claim order): like
/// [`ApplyFn`], it may run more than once for a job and must derive everything from the
/// record.
pub type ClaimApplyFn<'a> = dyn FnMut(&mut JobRecord, &[&Lease]) -> QueueWrites + Send + 'a;

/// A claim on the queue: up to `max` (> 0) entries `worker` may run, leased for `lease_for`
/// from `now` (the queue's [`claim`](crate::queue::LeaseQueue::claim)).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The claiming worker.
    pub worker: &'a WorkerCaps,
    /// Most entries to lease.
    pub max: usize,
    /// Lease length.
    pub lease_for: std::time::Duration,
    /// Now.
    pub now: Timestamp,
}

impl From<Vec<QueueEntry>> for QueueWrites {
    /// Entries to enqueue, nothing to ack.
    fn from(enqueue: Vec<QueueEntry>) -> Self {
        QueueWrites {
            enqueue,
            ack: Vec::new(),
        }
    }
}

/// Jobs and their tasks.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Writes new jobs with their tasks and dispatches each job's ready entries, all or none
    /// (SQLite: one transaction). Returns each job's outcome in order; a job whose idempotency
    /// key was already used, by an earlier request or an earlier job of this batch, is
    /// `Replayed` and not written. A job id already taken is a `Conflict`.
    async fn create_jobs(&self, jobs: &[NewJobWrite<'_>])
    -> Result<Vec<CreateOutcome>, StoreError>;

    /// Writes one new job: a batch of one.
    async fn create_job(
        &self,
        record: &JobRecord,
        ready: &[QueueEntry],
        idempotency: Option<&IdempotencyClaim>,
    ) -> Result<CreateOutcome, StoreError> {
        let write = NewJobWrite {
            record,
            ready,
            idempotency,
        };
        self.create_jobs(&[write])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a batch of one gave no outcome".into()))
    }

    /// Looks up a used idempotency key: the job it created and the first request's hash.
    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError>;

    /// The job with all its tasks.
    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError>;

    /// The job alone.
    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

    /// A page of jobs, newest first.
    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError>;

    /// A page of one job's tasks.
    async fn list_tasks(&self, job_id: &JobId, filter: &TaskFilter)
    -> Result<TaskPage, StoreError>;

    /// For each job that exists, applies `apply` to its record and writes back what changed
    /// plus the entries it returned, atomically per job (backends may batch jobs in one
    /// transaction). Missing jobs are skipped.
    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError>;

    /// Whether `update_jobs` takes [`QueueWrites::ack`]: the queue lives in this store's
    /// database ([`Dispatch::Direct`] on SQLite or Postgres), so a change and the acks it
    /// decides commit together, with no write of their own.
    fn acks_with_changes(&self) -> bool {
        false
    }

    /// Claims from the queue this store shares its database with and applies `apply` to
    /// each claimed job, in one transaction: the leases and the change they start commit
    /// together, or neither does. Returns the leases in claim order (those of jobs that no
    /// longer exist among them, for the caller to ack), or `None` when the queue lives
    /// elsewhere: then the caller claims from the queue and updates the store in turn.
    async fn claim_and_update(
        &self,
        _claim: &ClaimRequest<'_>,
        _apply: &mut ClaimApplyFn<'_>,
    ) -> Result<Option<Vec<Lease>>, StoreError> {
        Ok(None)
    }

    /// Extends `lease_expires` of running tasks whose lease matches. Returns, per renewal, the
    /// task's status when the lease is still the task's current lease, or `None` when it is not.
    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError>;

    /// Up to `limit` unfinished jobs, least recently changed first, with a task that has
    /// waited since before `before`: `Queued` in a job not changed since, or `Running` on a
    /// lease that ran out before it. The candidates the reconciliation sweep checks against
    /// the queue.
    async fn stale_jobs(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, StoreError>;

    /// Deletes up to `limit` terminal jobs that finished before `before`, oldest first, with
    /// everything that belongs to them: tasks, idempotency keys, streamed chunks, webhook
    /// deliveries, and any outbox or queue entries left. A job with a webhook delivery still
    /// pending is kept until it is delivered or fails. Returns the ids of the jobs deleted
    /// (their artifacts are the caller's to delete). The audit log is never pruned.
    async fn prune_finished(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Appends streamed output of `task`, numbered `first_seq..`, when `lease` is the task's
    /// current lease and the task is running (checked in the same statement as the write, so
    /// a worker whose lease was lost cannot add to a newer attempt's stream). A chunk whose
    /// `(lease, seq)` is already stored is skipped, so a repeated request adds nothing.
    /// Returns `false`, writing nothing, when the lease is not current.
    async fn append_chunks(
        &self,
        task: &TaskRef,
        lease: &LeaseId,
        first_seq: u32,
        texts: &[String],
    ) -> Result<bool, StoreError>;

    /// Up to `limit` chunks of `task` with an id above `after`, in id order.
    async fn chunks_after(
        &self,
        task: &TaskRef,
        after: i64,
        limit: usize,
    ) -> Result<Vec<TaskChunk>, StoreError>;
}

/// Registered workers.
#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Registers or re-registers a worker.
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records a heartbeat; `false` when the worker is not registered.
    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// One worker; `stale_before` decides its health.
    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError>;

    /// All workers, by id; `stale_before` decides their health.
    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError>;
}

/// Queue entries written by store transactions, waiting to be moved to an external queue.
#[async_trait]
pub trait DispatchOutbox: Send + Sync {
    /// The oldest undelivered entries with their outbox ids.
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError>;

    /// Forgets entries the queue has accepted.
    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError>;
}

/// Named locks with a deadline, so that work run on a schedule by many copies at once (the
/// Lambda sweeper, started again every minute whether or not the last run ended) runs in one
/// copy at a time. A holder that dies loses the lock when its deadline passes.
#[async_trait]
pub trait RunLocks: Send + Sync {
    /// Takes the lock `name` for `holder` until `until` when it is free, its deadline passed
    /// by `now`, or `holder` already has it; `false` (and nothing changed) when another
    /// holder has it.
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Gives the lock up if `holder` still has it.
    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// What an attempt means for its delivery: the deliverer decides, the store records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered; no more attempts.
    Delivered,
    /// Try again at this time.
    Retry(Timestamp),
    /// Give up; no more attempts.
    Failed,
}

impl AttemptOutcome {
    /// The delivery's state and next due time after this outcome.
    pub fn state_and_next(self) -> (DeliveryState, Option<Timestamp>) {
        match self {
            AttemptOutcome::Delivered => (DeliveryState::Delivered, None),
            AttemptOutcome::Retry(at) => (DeliveryState::Pending, Some(at)),
            AttemptOutcome::Failed => (DeliveryState::Failed, None),
        }
    }
}

/// Webhook deliveries, written by [`JobStore::update_jobs`] in the transaction of the change
/// that owes them (see [`crate::domain::owed_deliveries`]: a job with a `webhook_url` that
/// became terminal, or a task event the job asked for), and handed out
/// to deliverers under a lease, so that two gateway processes never send one at the same time.
#[async_trait]
pub trait WebhookOutbox: Send + Sync {
    /// Leases up to `limit` pending deliveries due at `now` whose lease (if any) ran out, to
    /// `token` until `lease_until`, oldest due first.
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError>;

    /// Records an attempt on a delivery leased to `token`: appends it to the log, counts it,
    /// applies `outcome` and ends the lease. `false` (and nothing written) when the delivery
    /// is no longer leased to `token` (its lease ran out and another deliverer took it).
    async fn record_webhook_attempt(
        &self,
        delivery_id: &str,
        token: &str,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError>;

    /// A job's deliveries, oldest first, with their attempts.
    async fn job_webhooks(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError>;
}

/// Filters for listing audit events, newest first. Every filter is an exact match except
/// `from` (inclusive) and `to` (exclusive) on `created_at`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditFilter {
    /// Page size.
    pub limit: u32,
    /// Events to skip.
    pub offset: u32,
    /// Exact action.
    pub action: Option<String>,
    /// Exact actor (a token fingerprint).
    pub actor: Option<String>,
    /// Exact tenant.
    pub tenant: Option<TenantId>,
    /// Exact result.
    pub result: Option<String>,
    /// Events at or after this instant.
    pub from: Option<Timestamp>,
    /// Events before this instant.
    pub to: Option<Timestamp>,
}

impl AuditFilter {
    /// Whether `e` passes the filter (paging aside): the one definition the memory backend
    /// uses and the SQL backends mirror.
    pub fn admits(&self, e: &AuditEvent) -> bool {
        let ev = &e.event;
        self.action.as_ref().is_none_or(|a| *a == ev.action)
            && self.actor.as_ref().is_none_or(|a| *a == ev.actor)
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == ev.tenant.as_ref())
            && self.result.as_ref().is_none_or(|r| *r == ev.result)
            && self.from.is_none_or(|f| ev.created_at >= f)
            && self.to.is_none_or(|t| ev.created_at < t)
    }
}

/// Events verified per page by [`AuditLog::verify`].
pub const AUDIT_VERIFY_PAGE: u32 = 500;

/// The tamper-evident audit log: an append-only SHA-256 chain of events.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends `event` as the new head of the chain: id one past the head's, `prev_hash` the
    /// head's `event_hash` ([`GENESIS_HASH`](crate::domain::GENESIS_HASH) for the first).
    /// Appends are serialised across threads and processes sharing the log, so the chain
    /// never forks.
    async fn append(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError>;

    /// A page of events matching `filter`, newest first.
    async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    /// Up to `limit` events with ids above `after`, oldest first: the chain, page by page.
    async fn chain_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;

    /// Walks the whole chain and reports the first broken link, if any.
    async fn verify(&self) -> Result<ChainReport, StoreError> {
        let mut walk = ChainWalk::default();
        loop {
            let page = self.chain_after(walk.last_id(), AUDIT_VERIFY_PAGE).await?;
            let full = page.len() == AUDIT_VERIFY_PAGE as usize;
            for e in &page {
                if !walk.check(e) {
                    return Ok(walk.finish());
                }
            }
            if !full {
                return Ok(walk.finish());
            }
        }
    }
}
