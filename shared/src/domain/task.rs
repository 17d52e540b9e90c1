//! Tasks: the nodes of a job's DAG, as specified by a client or planner and as stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{JobId, LeaseId, Priority, Status, TaskId, TaskType, TenantId, Timestamp, WorkerId};

/// What a task needs from the host it runs on.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Resources {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in megabytes.
    pub memory_mb: u64,
    /// Whether a GPU is required (a hard scheduling constraint).
    pub gpu: bool,
    /// GPU memory in megabytes, when a GPU is required.
    pub gpu_memory_mb: u64,
}

/// Placement constraints. Set fields are hard constraints on the claiming worker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Constraints {
    /// Preferred worker locality (a soft preference, scored later).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Model backend the worker must offer (`ollama`, `vllm`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Model the worker must serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The only worker allowed to run the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
}

/// A task as a client or planner describes it, before it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskSpec {
    /// Unique within the job.
    #[serde(alias = "id")]
    pub task_id: TaskId,
    /// Which executor runs it.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Executor inputs.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Tasks that must complete first.
    #[serde(default)]
    pub dependencies: Vec<TaskId>,
    /// Retries after the first attempt; the engine default when absent.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Soft timeout of one attempt in seconds; the engine default when absent.
    #[serde(default)]
    pub timeout_sec: Option<u32>,
    /// Host resources.
    #[serde(default)]
    pub resources: Resources,
    /// Placement constraints.
    #[serde(default)]
    pub constraints: Constraints,
}

/// A stored task with its execution state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    /// Unique within the job.
    pub task_id: TaskId,
    /// The owning job.
    pub job_id: JobId,
    /// The owning job's tenant (copied so queue entries need no join).
    pub tenant: TenantId,
    /// The owning job's priority class.
    pub priority: Priority,
    /// Which executor runs it.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Executor inputs; `dep:<task_id>:output_uri` keys are added as dependencies complete.
    pub inputs: Map<String, Value>,
    /// Tasks that must complete first.
    pub dependencies: Vec<TaskId>,
    /// Current status.
    pub status: Status,
    /// Attempts started so far (1 during the first run).
    pub attempt: u32,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Soft timeout of one attempt in seconds.
    pub timeout_sec: u32,
    /// Host resources.
    pub resources: Resources,
    /// Placement constraints.
    pub constraints: Constraints,
    /// The worker running (or that last ran) the task.
    pub worker_id: Option<WorkerId>,
    /// The current lease, while running.
    pub lease_id: Option<LeaseId>,
    /// When the current lease runs out unless renewed.
    #[serde(with = "super::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires: Option<Timestamp>,
    /// Where the output artifact is, once completed.
    pub output_artifact_uri: Option<String>,
    /// What is known about the output artifact, when the worker said.
    #[serde(default)]
    pub output_artifact: Option<super::Artifact>,
    /// The output itself, when it was small enough to travel inline in the report (the
    /// artifact's `type` is then `inline`); larger outputs live in the artifact store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Option<super::InlineOutput>,
    /// The last failure.
    pub error: Option<String>,
    /// The idempotency key of the last applied report.
    pub last_report_key: Option<String>,
    /// When the task was created.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When the task last changed.
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// When the current or last attempt started.
    #[serde(with = "super::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When the task reached a terminal status.
    #[serde(with = "super::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

impl Task {
    /// Attempts allowed in total: the first run plus `max_retries`.
    pub fn max_attempts(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The cross-job reference to this task.
    pub fn task_ref(&self) -> super::TaskRef {
        super::TaskRef {
            job_id: self.job_id.clone(),
            task_id: self.task_id.clone(),
        }
    }
}
