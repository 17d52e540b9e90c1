//! The entry record the scripts keep in `<key>:entries`, and its decoding into domain types.

use serde::{Deserialize, Serialize};

use super::QueueError;
use crate::clock::{from_millis, to_millis};
use crate::domain::{
    DeadLetter, JobId, Lease, LeaseId, Priority, QueueEntry, Requirements, TaskId, TenantId,
    Timestamp, WorkerId,
};

/// An entry as the scripts store it. Timestamps are decimal millisecond strings so that Lua's
/// number formatting never rounds them; the scripts add the state fields.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Record {
    job: String,
    task: String,
    tenant: String,
    priority: i64,
    gpu: bool,
    backend: Option<String>,
    model: Option<String>,
    target: Option<String>,
    attempt: u32,
    max_attempts: u32,
    not_before: String,
    #[serde(default, skip_serializing)]
    lease_id: Option<String>,
    #[serde(default, skip_serializing)]
    worker: Option<String>,
    #[serde(default, skip_serializing)]
    expires: Option<String>,
    #[serde(default, skip_serializing)]
    reason: Option<String>,
    #[serde(default, skip_serializing)]
    dead_at: Option<String>,
}

impl Record {
    pub(super) fn of(e: &QueueEntry) -> Self {
        Self {
            job: e.job_id.to_string(),
            task: e.task_id.to_string(),
            tenant: e.tenant.to_string(),
            priority: e.priority.rank(),
            gpu: e.requirements.gpu,
            backend: e.requirements.backend.clone(),
            model: e.requirements.model.clone(),
            target: e.requirements.worker_id.as_ref().map(ToString::to_string),
            attempt: e.attempt,
            max_attempts: e.max_attempts,
            not_before: to_millis(e.not_before).to_string(),
            lease_id: None,
            worker: None,
            expires: None,
            reason: None,
            dead_at: None,
        }
    }

    pub(super) fn decode(raw: &str) -> Result<Self, QueueError> {
        serde_json::from_str(raw).map_err(|e| corrupt("entry", e))
    }

    fn into_entry(self) -> Result<QueueEntry, QueueError> {
        Ok(QueueEntry {
            job_id: JobId::parse(self.job).map_err(|e| corrupt("job id", e))?,
            task_id: TaskId::parse(self.task).map_err(|e| corrupt("task id", e))?,
            tenant: TenantId::parse(self.tenant).map_err(|e| corrupt("tenant", e))?,
            priority: Priority::from_rank(self.priority),
            requirements: Requirements {
                gpu: self.gpu,
                backend: self.backend,
                model: self.model,
                worker_id: self.target.map(parse_worker).transpose()?,
            },
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            not_before: millis(&self.not_before)?,
        })
    }

    pub(super) fn into_lease(mut self) -> Result<Lease, QueueError> {
        let lease_id = self.lease_id.take().ok_or_else(|| missing("lease_id"))?;
        let expires = self.expires.take().ok_or_else(|| missing("expires"))?;
        let worker_id = self.worker.take().map(parse_worker).transpose()?;
        Ok(Lease {
            lease_id: LeaseId::parse(lease_id).map_err(|e| corrupt("lease id", e))?,
            worker_id,
            expires_at: millis(&expires)?,
            entry: self.into_entry()?,
        })
    }

    pub(super) fn into_dead_letter(mut self) -> Result<DeadLetter, QueueError> {
        let reason = self.reason.take().ok_or_else(|| missing("reason"))?;
        let dead_at = millis(&self.dead_at.take().ok_or_else(|| missing("dead_at"))?)?;
        Ok(DeadLetter {
            entry: self.into_entry()?,
            reason,
            dead_at,
        })
    }
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("redis queue {what}: {e}"))
}

fn missing(field: &str) -> QueueError {
    QueueError::Corrupt(format!("redis queue entry without `{field}`"))
}

fn parse_worker(w: String) -> Result<WorkerId, QueueError> {
    WorkerId::parse(w).map_err(|e| corrupt("worker id", e))
}

fn millis(s: &str) -> Result<Timestamp, QueueError> {
    s.parse::<i64>()
        .map(from_millis)
        .map_err(|e| corrupt("timestamp", e))
}
