//! Queue entries and leases: what the queue holds, independent of which engine holds it.

use super::{JobId, LeaseId, Priority, TaskId, TaskRef, TenantId, Timestamp, WorkerCaps, WorkerId};

/// Hard constraints a claiming worker must meet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Requirements {
    /// Requires a GPU.
    pub gpu: bool,
    /// Requires this backend.
    pub backend: Option<String>,
    /// Requires this model.
    pub model: Option<String>,
    /// Only this worker may claim it.
    pub worker_id: Option<WorkerId>,
}

impl Requirements {
    /// Whether a worker with these capabilities may run the entry.
    pub fn admit(&self, caps: &WorkerCaps) -> bool {
        (!self.gpu || caps.gpu)
            && self
                .backend
                .as_ref()
                .is_none_or(|b| caps.backends.contains(b))
            && self
                .model
                .as_ref()
                .is_none_or(|m| caps.models.contains(m) || caps.models.contains(super::ANY_MODEL))
            && self
                .worker_id
                .as_ref()
                .is_none_or(|w| caps.worker_id.as_ref() == Some(w))
    }
}

/// A ready task waiting in the queue. There is at most one entry per task: enqueueing a task
/// that already has an entry replaces it (the store, not the queue, is the source of truth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The owning job.
    pub job_id: JobId,
    /// The task.
    pub task_id: TaskId,
    /// The job's tenant.
    pub tenant: TenantId,
    /// Claim class.
    pub priority: Priority,
    /// Hard constraints.
    pub requirements: Requirements,
    /// Deliveries so far; a claim makes it `attempt + 1`.
    pub attempt: u32,
    /// Deliveries allowed before the entry is dead-lettered on lease expiry.
    pub max_attempts: u32,
    /// Not claimable before this instant (retry backoff).
    pub not_before: Timestamp,
}

impl QueueEntry {
    /// The task this entry stands for.
    pub fn task_ref(&self) -> TaskRef {
        TaskRef {
            job_id: self.job_id.clone(),
            task_id: self.task_id.clone(),
        }
    }
}

/// A claimed entry, owned by one worker until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The claimed entry; `entry.attempt` is this delivery's number (1 for the first).
    pub entry: QueueEntry,
    /// Quoted by renewals and reports.
    pub lease_id: LeaseId,
    /// The claiming worker.
    pub worker_id: Option<WorkerId>,
    /// When the lease runs out unless renewed.
    pub expires_at: Timestamp,
}

/// What lease expiry did with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryOutcome {
    /// Back in the pending set for another delivery.
    Requeued,
    /// Delivered `max_attempts` times; moved to the dead letters.
    DeadLettered,
}

/// A lease that ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The lease as it was.
    pub lease: Lease,
    /// Where the entry went.
    pub outcome: ExpiryOutcome,
}

/// An entry in the dead-letter set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The entry as it was when it died.
    pub entry: QueueEntry,
    /// Why it died.
    pub reason: String,
    /// When it died.
    pub dead_at: Timestamp,
}
