//! Domain types: jobs, tasks, workers, leases, queue entries and audit events. Types only, no
//! I/O.

mod artifact;
mod audit;
mod chunk;
mod ids;
mod job;
mod output;
mod queue;
mod status;
mod task;
mod webhook;
mod worker;

pub use artifact::Artifact;
pub use audit::{
    AuditEvent, ChainReport, ChainWalk, GENESIS_HASH, NewAuditEvent, canonical, event_hash,
};
pub use chunk::TaskChunk;
pub use ids::{
    IdError, IdempotencyKey, JobId, LeaseId, MAX_LEASE_ID_LEN, TaskId, TaskRef, TenantId, WorkerId,
};
pub use job::{Job, JobRecord, NewJob};
pub use output::InlineOutput;
pub use queue::{DeadLetter, Expired, ExpiryOutcome, Lease, QueueEntry, Requirements};
pub use status::{PlannerMode, Priority, Status, TaskType};
pub use task::{Constraints, Resources, Task, TaskSpec};
pub use webhook::{
    BeforeChange, DeliveryState, TASK_EVENTS, WEBHOOK_EVENTS_KEY, WebhookAttempt, WebhookDelivery,
    job_event, owed_deliveries, task_events,
};
pub use worker::{ANY_MODEL, Heartbeat, Worker, WorkerCaps, WorkerHealth, WorkerRegistration};

/// Wall-clock timestamps used throughout the domain (UTC, RFC 3339 on the wire).
pub type Timestamp = time::OffsetDateTime;

/// Serde helpers for RFC 3339 timestamps.
pub mod rfc3339 {
    pub use time::serde::rfc3339::*;
    /// Optional RFC 3339 timestamps.
    pub mod option {
        pub use time::serde::rfc3339::option::*;
    }
}
