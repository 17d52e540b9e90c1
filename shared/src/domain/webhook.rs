//! Webhook deliveries: one signed POST of a job event (or, when the job asks in
//! `metadata.webhook_events`, a task event) to the job's `webhook_url`, kept in a durable
//! outbox with its attempts until delivered or given up.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Job, JobId, JobRecord, Status, Task, TaskId, TenantId, Timestamp};

/// The job metadata key that opts into task events: an array of [`TASK_EVENTS`] names.
pub const WEBHOOK_EVENTS_KEY: &str = "webhook_events";

/// The task events a job may ask for.
pub const TASK_EVENTS: [&str; 2] = ["task.completed", "task.failed"];

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookAttempt {
    /// When it was made.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why it failed without an answer (connection refused, refused destination, timeout).
    pub error: Option<String>,
}

/// A job event bound for a webhook receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookDelivery {
    /// Unique per delivery and kept across its retries: receivers dedupe on it.
    pub delivery_id: String,
    /// The job it reports on.
    pub job_id: JobId,
    /// The job's tenant; picks the signing secret.
    pub tenant: TenantId,
    /// `job.completed`, `job.failed`, `job.canceled`, or (when asked) `task.completed`,
    /// `task.failed`.
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
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt_at: Option<Timestamp>,
    /// When the event happened.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
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

/// What a job change is compared with: the statuses before the rule ran. Task statuses are
/// kept only for a job that asked for task events, so most updates copy nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeforeChange {
    status: Status,
    tasks: Vec<(TaskId, Status)>,
}

impl BeforeChange {
    /// The statuses of `record` that [`owed_deliveries`] needs.
    pub fn of(record: &JobRecord) -> Self {
        let tasks = if record.job.webhook_url.is_some() && !task_events(&record.job).is_empty() {
            record
                .tasks
                .iter()
                .map(|t| (t.task_id.clone(), t.status))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            status: record.job.status,
            tasks,
        }
    }
}

/// The task events `job` asked for in `metadata.webhook_events` (unknown names ignored; the
/// gateway refuses them at submit).
pub fn task_events(job: &Job) -> Vec<&'static str> {
    let Some(Value::Array(asked)) = job.metadata.get(WEBHOOK_EVENTS_KEY) else {
        return Vec::new();
    };
    TASK_EVENTS
        .into_iter()
        .filter(|e| asked.iter().any(|a| a.as_str() == Some(e)))
        .collect()
}

/// Every delivery a job change owes its webhook: the job's terminal event, and the task
/// events it asked for, for each task that just completed or failed for good. Stores call
/// this on every job they write, in the same transaction, so a committed change always has
/// its deliveries.
pub fn owed_deliveries(before: &BeforeChange, after: &JobRecord) -> Vec<WebhookDelivery> {
    let mut out = Vec::new();
    if after.job.webhook_url.is_none() {
        return out;
    }
    let wanted = task_events(&after.job);
    if !wanted.is_empty() {
        for task in &after.tasks {
            let was = before
                .tasks
                .iter()
                .find(|(id, _)| *id == task.task_id)
                .map(|(_, s)| *s);
            let event = match task.status {
                Status::Completed => "task.completed",
                Status::Failed => "task.failed",
                _ => continue,
            };
            if was != Some(task.status) && wanted.contains(&event) {
                out.extend(delivery(&after.job, event, Some(task)));
            }
        }
    }
    out.extend(terminal_delivery(before.status, &after.job));
    out
}

/// The job event a change owes: one when the job has a `webhook_url` and just reached a
/// terminal status (from `before`).
fn terminal_delivery(before: Status, after: &Job) -> Option<WebhookDelivery> {
    if before == after.status {
        return None;
    }
    delivery(after, job_event(after.status)?, None)
}

/// A new delivery of `event` about `job` (and `task`, for a task event), due at once.
fn delivery(job: &Job, event: &str, task: Option<&Task>) -> Option<WebhookDelivery> {
    let url = job.webhook_url.as_ref()?;
    let delivery_id = format!("whd-{}", uuid::Uuid::now_v7());
    let created_at = task.map_or(job.updated_at, |t| t.updated_at);
    let when = created_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // Serialising a Job or Task cannot fail (string keys only); `Null` would still be a
    // valid body.
    let mut data = json!({ "job": serde_json::to_value(job).unwrap_or(Value::Null) });
    if let Some(t) = task {
        data["task"] = serde_json::to_value(t).unwrap_or(Value::Null);
    }
    let body = json!({
        "id": delivery_id,
        "type": event,
        "created_at": when,
        "data": data,
    })
    .to_string();
    Some(WebhookDelivery {
        delivery_id,
        job_id: job.job_id.clone(),
        tenant: job.tenant.clone(),
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
