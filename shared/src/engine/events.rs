//! Job events published to live subscribers (the SSE stream), derived by diffing records.

use serde::Serialize;

use crate::domain::{Job, JobId, JobRecord, Status, Task};

/// A change to a job or one of its tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JobEvent {
    /// The job's status changed.
    Job(Box<Job>),
    /// A task changed.
    Task(Box<Task>),
}

impl JobEvent {
    /// The job the event belongs to.
    pub fn job_id(&self) -> &JobId {
        match self {
            JobEvent::Job(j) => &j.job_id,
            JobEvent::Task(t) => &t.job_id,
        }
    }

    /// The SSE event name: `task.update`, `job.status`, or the terminal `job.completed`,
    /// `job.failed`, `job.canceled`.
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Task(_) => "task.update",
            JobEvent::Job(j) => match j.status {
                Status::Completed => "job.completed",
                Status::Failed => "job.failed",
                Status::Canceled => "job.canceled",
                Status::Queued | Status::Running => "job.status",
            },
        }
    }

    /// Whether no further events follow for this job (until an explicit retry).
    pub fn is_terminal(&self) -> bool {
        matches!(self, JobEvent::Job(j) if j.status.is_terminal())
    }
}

/// The events that turn `before` into `after`: changed tasks first, then the job's status.
pub fn diff(before: &JobRecord, after: &JobRecord) -> Vec<JobEvent> {
    let mut out: Vec<JobEvent> = after
        .tasks
        .iter()
        .zip(before.tasks.iter())
        .filter(|(a, b)| a.status != b.status || a.attempt != b.attempt || a.lease_id != b.lease_id)
        .map(|(a, _)| JobEvent::Task(Box::new(a.clone())))
        .collect();
    if after.job.status != before.job.status {
        out.push(JobEvent::Job(Box::new(after.job.clone())));
    }
    out
}
