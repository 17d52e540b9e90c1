//! Jobs: what a client submits, and the stored job with its tasks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    IdempotencyKey, JobId, PlannerMode, Priority, Status, Task, TaskSpec, TenantId, Timestamp,
};

/// A validated submission, before planning.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewJob {
    /// Owning tenant.
    pub tenant: Option<TenantId>,
    /// Job type, e.g. `chat`, `batch_analysis`, `embedding`; selects the template.
    pub job_type: String,
    /// The job's input (a prompt string or any JSON).
    pub input: Value,
    /// Named policy, if any.
    pub policy: Option<String>,
    /// Priority class.
    pub priority: Priority,
    /// How to plan when `tasks` is absent.
    pub planner_mode: PlannerMode,
    /// Requested model.
    pub model: Option<String>,
    /// Latency class used by routing.
    pub latency_class: Option<String>,
    /// Whether routing should prefer a reasoning model.
    pub reasoning_required: bool,
    /// Data classification used by policy and routing.
    pub data_classification: Option<String>,
    /// Network isolation requirement.
    pub network_isolation: Option<String>,
    /// Where to POST job events.
    pub webhook_url: Option<String>,
    /// Free-form client metadata.
    pub metadata: Map<String, Value>,
    /// A client-supplied DAG that bypasses the planner.
    pub tasks: Option<Vec<TaskSpec>>,
    /// Makes the submit safe to repeat.
    pub idempotency_key: Option<IdempotencyKey>,
    /// The W3C `traceparent` of the submit request, when it is traced: the job's tasks run
    /// as children of it. Not part of the idempotency fingerprint.
    pub trace_parent: Option<String>,
}

/// A stored job (without its tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// Identifier.
    pub job_id: JobId,
    /// Owning tenant.
    pub tenant: TenantId,
    /// Job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The job's input.
    pub input: Value,
    /// Named policy, if any.
    pub policy: Option<String>,
    /// Priority class.
    pub priority: Priority,
    /// How the job was planned.
    pub planner_mode: PlannerMode,
    /// Requested model.
    pub model: Option<String>,
    /// Latency class.
    pub latency_class: Option<String>,
    /// Whether a reasoning model is required.
    pub reasoning_required: bool,
    /// Data classification.
    pub data_classification: Option<String>,
    /// Network isolation requirement.
    pub network_isolation: Option<String>,
    /// Where job events are POSTed.
    pub webhook_url: Option<String>,
    /// Client metadata.
    pub metadata: Map<String, Value>,
    /// Current status.
    pub status: Status,
    /// Human-readable explanation of the status.
    pub message: String,
    /// The output of the job's final task, once completed.
    pub result_artifact_uri: Option<String>,
    /// Number of tasks in the DAG.
    pub task_count: u32,
    /// When the job was submitted.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the job last changed.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// When the job reached a terminal status.
    #[serde(with = "super::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// The W3C `traceparent` of the submit request, when it was traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// A job with all its tasks: the unit that changes atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The job.
    pub job: Job,
    /// Its tasks, in planning order.
    pub tasks: Vec<Task>,
}

impl JobRecord {
    /// The task with this id.
    pub fn task(&self, id: &super::TaskId) -> Option<&Task> {
        self.tasks.iter().find(|t| &t.task_id == id)
    }

    /// The task with this id, mutably.
    pub fn task_mut(&mut self, id: &super::TaskId) -> Option<&mut Task> {
        self.tasks.iter_mut().find(|t| &t.task_id == id)
    }
}
