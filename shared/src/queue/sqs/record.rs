//! What travels through SQS: the message body (one entry), a dead letter's body, and the lease
//! id, which carries everything a later call needs so that any gateway instance can act on it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::QueueError;
use crate::clock::{from_millis, to_millis};
use crate::domain::{
    DeadLetter, JobId, LeaseId, Priority, QueueEntry, Requirements, TaskId, TaskRef, TenantId,
    WorkerId,
};

/// A message body: an entry, plus the reason once it is a dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Body {
    job: String,
    task: String,
    tenant: String,
    priority: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    gpu: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// Deliveries before this message was sent: a receive is delivery
    /// `attempt + ApproximateReceiveCount`. In a lease id: this delivery's number.
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    /// Milliseconds; also the FIFO key within a class (kept when a message is sent again).
    pub(super) not_before: i64,
    /// Why it died (dead letters we moved; one the SQS redrive moved has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) dead_at: Option<i64>,
}

impl Body {
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
            not_before: to_millis(e.not_before),
            reason: None,
            dead_at: None,
        }
    }

    pub(super) fn decode(raw: &str) -> Result<Self, QueueError> {
        serde_json::from_str(raw).map_err(|e| corrupt("message body", e))
    }

    pub(super) fn encode(&self) -> String {
        // A struct of strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The priority class index (0 interactive, 1 standard, 2 batch).
    pub(super) fn class(&self) -> usize {
        match Priority::from_rank(self.priority) {
            Priority::Interactive => 0,
            Priority::Standard => 1,
            Priority::Batch => 2,
        }
    }

    pub(super) fn tenant(&self) -> &str {
        &self.tenant
    }

    pub(super) fn task_ref(&self) -> Result<TaskRef, QueueError> {
        Ok(TaskRef {
            job_id: JobId::parse(self.job.clone()).map_err(|e| corrupt("job id", e))?,
            task_id: TaskId::parse(self.task.clone()).map_err(|e| corrupt("task id", e))?,
        })
    }

    pub(super) fn into_entry(self) -> Result<QueueEntry, QueueError> {
        Ok(QueueEntry {
            job_id: JobId::parse(self.job).map_err(|e| corrupt("job id", e))?,
            task_id: TaskId::parse(self.task).map_err(|e| corrupt("task id", e))?,
            tenant: TenantId::parse(self.tenant).map_err(|e| corrupt("tenant", e))?,
            priority: Priority::from_rank(self.priority),
            requirements: Requirements {
                gpu: self.gpu,
                backend: self.backend,
                model: self.model,
                worker_id: self
                    .target
                    .map(|w| WorkerId::parse(w).map_err(|e| corrupt("worker id", e)))
                    .transpose()?,
            },
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            not_before: from_millis(self.not_before),
        })
    }

    /// A dead letter; `redriven` gives the reason and time of one the SQS redrive moved.
    pub(super) fn into_dead_letter(
        mut self,
        redriven: (String, i64),
    ) -> Result<DeadLetter, QueueError> {
        let reason = self.reason.take().unwrap_or(redriven.0);
        let dead_at = from_millis(self.dead_at.take().unwrap_or(redriven.1));
        Ok(DeadLetter {
            entry: self.into_entry()?,
            reason,
            dead_at,
        })
    }
}

/// What a lease id carries: the class queue, the receipt handle, and the entry as delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LeaseToken {
    pub(super) class: usize,
    pub(super) handle: String,
    pub(super) body: Body,
}

const LEASE_PREFIX: &str = "sqs-";

impl LeaseToken {
    pub(super) fn to_lease_id(&self) -> Result<LeaseId, QueueError> {
        let json = serde_json::to_vec(self).map_err(|e| corrupt("lease", e))?;
        LeaseId::parse(format!("{LEASE_PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
            .map_err(|e| corrupt("lease id", e))
    }

    /// `None` for a lease id this queue did not make (another backend's, or garbled): such a
    /// lease is simply not held.
    pub(super) fn parse(id: &LeaseId) -> Option<Self> {
        let raw = id.as_str().strip_prefix(LEASE_PREFIX)?;
        let json = URL_SAFE_NO_PAD.decode(raw).ok()?;
        serde_json::from_slice::<Self>(&json)
            .ok()
            .filter(|t| t.class < 3)
    }
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Corrupt(format!("sqs queue {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};

    /// A lease id round-trips its queue, handle and entry, stays within the id rules even for
    /// the longest receipt handle SQS issues, and a foreign lease id is not mistaken for one.
    #[test]
    fn lease_ids_round_trip_within_the_id_rules() {
        let entry = QueueEntry {
            job_id: JobId::parse("job-1").unwrap(),
            task_id: TaskId::parse("t/1").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            priority: Priority::Batch,
            requirements: Requirements {
                gpu: true,
                model: Some("llama3".into()),
                ..Default::default()
            },
            attempt: 2,
            max_attempts: 4,
            not_before: crate::clock::truncate_millis(SystemClock.now()),
        };
        let token = LeaseToken {
            class: 2,
            handle: "AQEB+/=".repeat(1024 / 7),
            body: Body::of(&entry),
        };
        let id = token.to_lease_id().unwrap();
        let back = LeaseToken::parse(&id).unwrap();
        assert_eq!(
            (back.class, back.handle.as_str()),
            (2, token.handle.as_str())
        );
        assert_eq!(back.body.into_entry().unwrap(), entry);
        assert!(LeaseToken::parse(&LeaseId::generate()).is_none());
        assert!(LeaseToken::parse(&LeaseId::parse("sqs-garbage").unwrap()).is_none());
    }
}
