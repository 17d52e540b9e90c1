//! Webhook deliveries: one signed POST of a job event to the job's `webhook_url`, kept in a
//! durable outbox with its attempts until delivered or given up.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Job, JobId, Status, TenantId, Timestamp};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt failed; no more are made.
    Failed,
}

impl DeliveryState {
    /// The stored and wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryState::Pending),
            "delivered" => Ok(DeliveryState::Delivered),
            "failed" => Ok(DeliveryState::Failed),
            other => Err(format!("unknown delivery state `{other}`")),
        }
    }
}

/// One POST of a delivery and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookAttempt {
    /// When it was made.
    #[serde(with = "super::rfc3339")]
    pub at: Timestamp,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed without an answer (connection refused, refused destination, timeout).
    pub error: Option<String>,
}

/// A job event bound for a webhook receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Unique per delivery and kept across its retries: receivers dedupe on it.
    pub delivery_id: String,
    /// The job it reports on.
    pub job_id: JobId,
    /// The job's tenant; picks the signing secret.
    pub tenant: TenantId,
    /// `job.completed`, `job.failed` or `job.canceled`.
    pub event: String,
    /// Where it is POSTed.
    pub url: String,
    /// The exact JSON body sent (and signed) on every attempt.
    #[serde(skip)]
    pub body: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; `None` once delivered or failed.
    #[serde(with = "super::rfc3339::option")]
    pub next_attempt_at: Option<Timestamp>,
    /// When the event happened.
    #[serde(with = "super::rfc3339")]
    pub created_at: Timestamp,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<WebhookAttempt>,
}

/// The event name for a terminal status.
pub fn job_event(status: Status) -> Option<&'static str> {
    match status {
        Status::Completed => Some("job.completed"),
        Status::Failed => Some("job.failed"),
        Status::Canceled => Some("job.canceled"),
        Status::Queued | Status::Running => None,
    }
}

/// The delivery a job change owes its webhook: one when the job has a `webhook_url` and just
/// reached a terminal status (from `before`). Stores call this on every job they write, in the
/// same transaction, so a committed terminal status always has its delivery.
pub fn terminal_delivery(before: Status, after: &Job) -> Option<WebhookDelivery> {
    let url = after.webhook_url.as_ref()?;
    if before == after.status {
        return None;
    }
    let event = job_event(after.status)?;
    let delivery_id = format!("whd-{}", uuid::Uuid::now_v7());
    let created_at = after.updated_at;
    let when = created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // Serialising a Job cannot fail (string keys only); `Null` would still be a valid body.
    let job = serde_json::to_value(after).unwrap_or(Value::Null);
    let body = json!({
        "id": delivery_id,
        "type": event,
        "created_at": when,
        "data": { "job": job },
    })
    .to_string();
    Some(WebhookDelivery {
        delivery_id,
        job_id: after.job_id.clone(),
        tenant: after.tenant.clone(),
        event: event.to_owned(),
        url: url.clone(),
        body,
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: Some(created_at),
        created_at,
        attempt_log: Vec::new(),
    })
}
