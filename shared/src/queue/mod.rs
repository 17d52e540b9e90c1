//! The delivery seam: a lease queue of ready tasks.
//!
//! The queue decides *who runs what next*; the store stays the source of truth for task state.
//! Entries are keyed by task (enqueue replaces), claims hand out time-bounded leases, and the
//! engine drops any claimed entry the store no longer considers runnable. That makes duplicate
//! or late deliveries harmless, which is what lets an external queue sit behind an outbox.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{
    DeadLetter, Expired, Lease, LeaseId, Priority, QueueEntry, TaskRef, Timestamp, WorkerCaps,
};

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

/// Errors crossing the queue boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The backend could not be reached or timed out; the caller may retry.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// Queue data could not be decoded.
    #[error("corrupt queue data: {0}")]
    Corrupt(String),
}

/// Pending entries per priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Claimable or waiting-on-backoff `interactive` entries.
    pub interactive: u64,
    /// `standard` entries.
    pub standard: u64,
    /// `batch` entries.
    pub batch: u64,
    /// Entries under a lease.
    pub leased: u64,
    /// Dead letters.
    pub dead: u64,
}

impl QueueDepth {
    /// Adds one pending entry of a class.
    pub fn add_pending(&mut self, priority: Priority, n: u64) {
        match priority {
            Priority::Interactive => self.interactive += n,
            Priority::Standard => self.standard += n,
            Priority::Batch => self.batch += n,
        }
    }
}

/// A queue of ready tasks with leases, retries and dead letters.
#[async_trait]
pub trait LeaseQueue: Send + Sync {
    /// Short name for metrics labels (`sqlite`, `memory`, `redis`, `sqs`, ...).
    fn backend_name(&self) -> &'static str;

    /// A notifier the queue fires when entries become claimable through *another* process
    /// (Postgres: a `LISTEN` on the channel every enqueue `NOTIFY`s). The engine's long-polling
    /// claimers wait on it as well as on their own process's dispatches. `None`, the default,
    /// for queues that have no such source (memory, SQLite: one process owns them).
    fn wake_source(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Adds entries; an entry for a task that already has one (pending, leased or dead)
    /// replaces it.
    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError>;

    /// Leases up to `max` pending entries the worker may run and whose `not_before` has
    /// passed: higher priority classes first, FIFO within a class. Each claim increments the
    /// entry's `attempt`.
    async fn claim(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError>;

    /// [`claim`](Self::claim), allowed to wait up to `wait` when nothing is claimable: a queue
    /// that long-polls natively (SQS) waits inside the call, so an idle claimer costs one
    /// request per long poll rather than one per engine poll interval. The default claims
    /// once without waiting; the engine's own loop does the rest.
    async fn claim_waiting(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let _ = wait;
        self.claim(worker, max, lease_for, now).await
    }

    /// Extends leases; returns the ones that are still held (and were extended).
    async fn renew(&self, leases: &[LeaseId], until: Timestamp)
    -> Result<Vec<LeaseId>, QueueError>;

    /// Removes leased entries for good (the task finished, or was found stale).
    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError>;

    /// Returns leased entries to the pending set, claimable again at `retry_at`.
    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError>;

    /// Returns leased entries to pending as if they had never been claimed: the delivery is
    /// handed back unused (a worker shutting down), so the attempt count goes back down by
    /// one and the entry keeps its FIFO position.
    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError>;

    /// Moves leased entries to the dead letters with a reason.
    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError>;

    /// Ends every lease that ran out by `now`: the entry is requeued, or dead-lettered when it
    /// has been delivered `max_attempts` times.
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError>;

    /// Drops the entries of these tasks, in any state (their job was canceled).
    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError>;

    /// Dead letters, oldest first.
    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Moves these tasks from the dead letters back to pending with their attempt count reset.
    /// Returns the ones that were dead letters.
    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError>;

    /// Per task, whether the queue holds an entry for it (pending, leased or dead). The
    /// reconciliation sweep re-enqueues ready tasks an external queue has lost.
    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError>;

    /// Entries per class and state.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;

    /// Checks the backend answers.
    async fn ping(&self) -> Result<(), QueueError>;
}
