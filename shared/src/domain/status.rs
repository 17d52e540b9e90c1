//! Status, priority, planner-mode and task-type enums with their exact wire strings.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Lifecycle status shared by jobs and tasks. The strings are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Status {
    /// Waiting: for a worker, for dependencies, or for a retry backoff.
    Queued,
    /// Leased to a worker (task) or has started tasks (job).
    Running,
    /// Finished successfully.
    Completed,
    /// Exhausted its retries (task) or has a failed task (job).
    Failed,
    /// Stopped on request, or because something it depended on failed.
    Canceled,
}

impl Status {
    /// All statuses, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Queued,
        Status::Running,
        Status::Completed,
        Status::Failed,
        Status::Canceled,
    ];

    /// The exact wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "Queued",
            Status::Running => "Running",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
            Status::Canceled => "Canceled",
        }
    }

    /// Whether nothing more will happen without an explicit retry.
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Canceled)
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`, expected one of Queued, Running, Completed, Failed, Canceled"))
    }
}

/// Priority class. `interactive` work is claimed before `standard`, which is claimed before `batch`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Latency-sensitive work.
    Interactive,
    /// The default class.
    #[default]
    Standard,
    /// Throughput work that may wait.
    Batch,
}

impl Priority {
    /// Claim order: lower ranks are claimed first.
    pub fn rank(self) -> i64 {
        match self {
            Priority::Interactive => 0,
            Priority::Standard => 1,
            Priority::Batch => 2,
        }
    }

    /// The priority of a claim rank.
    pub fn from_rank(rank: i64) -> Self {
        match rank {
            0 => Priority::Interactive,
            2 => Priority::Batch,
            _ => Priority::Standard,
        }
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Standard => "standard",
            Priority::Batch => "batch",
        }
    }
}

/// How a job is turned into tasks when the client supplies none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlannerMode {
    /// Deterministic decomposition by job type.
    #[default]
    Template,
    /// Ask the LLM planner endpoint; fall back to the template on any error.
    LlmPlanner,
    /// The template plus an aggregation tail.
    Hybrid,
}

/// What a task does; selects the worker's executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Run a prompt through a model backend.
    LlmInference,
    /// Embed text.
    Embedding,
    /// Retrieve documents.
    Retrieval,
    /// Merge dependency outputs.
    Aggregation,
    /// Run a sandboxed command.
    ToolExecution,
    /// Fetch model weights into the worker's cache.
    ModelDownload,
}

impl TaskType {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::LlmInference => "llm_inference",
            TaskType::Embedding => "embedding",
            TaskType::Retrieval => "retrieval",
            TaskType::Aggregation => "aggregation",
            TaskType::ToolExecution => "tool_execution",
            TaskType::ModelDownload => "model_download",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_are_exact() {
        for st in Status::ALL {
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
            assert_eq!(st.as_str().parse::<Status>().unwrap(), st);
        }
        assert!("queued".parse::<Status>().is_err());
    }

    #[test]
    fn priority_ranks_order_interactive_first() {
        assert!(Priority::Interactive.rank() < Priority::Standard.rank());
        assert!(Priority::Standard.rank() < Priority::Batch.rank());
        for p in [Priority::Interactive, Priority::Standard, Priority::Batch] {
            assert_eq!(Priority::from_rank(p.rank()), p);
        }
    }
}
