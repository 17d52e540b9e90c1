//! Executors: what runs a task of each type. Each returns the task's output as JSON (sent
//! inline in the report, or stored as the task's `output.json` artifact when large, by the
//! runtime) or a classified error.
//!
//! - `llm.rs`: `llm_inference` through the task's routed model backend.
//! - `stream.rs`: forwarding a streaming task's tokens to the gateway while it runs.
//! - `embedding.rs`: `embedding` through a model backend, or local hash vectors.
//! - `retrieval.rs`: `retrieval` over the documents the task supplies.
//! - `aggregation.rs`: `aggregation` merging dependency outputs.
//! - `tool.rs`: `tool_execution`, a command in a sandbox directory with a timeout.
//! - `model_download.rs`: `model_download` into the model cache.
//! - `deps.rs`: reading dependency outputs (`dep:<task>:output_uri`).
//! - `inputs.rs`: typed inputs (numbers, flags, lists, JSON-encoded `*_json` inputs).

use std::sync::Arc;

use serde_json::Value;
use splai_shared::artifacts::ArtifactStore;
use splai_shared::domain::TaskType;
use splai_shared::engine::Assignment;

use crate::client::GatewayClient;
use crate::config::ExecutorConfig;
use crate::models::{ModelBackend, ModelBackends, ModelError};

mod aggregation;
mod deps;
mod embedding;
mod inputs;
mod llm;
mod model_download;
mod retrieval;
mod stream;
#[cfg(test)]
mod testing;
mod tool;

pub use model_download::{model_id_problem, source_supported};
pub use tool::network_isolation_available;

/// Why an attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// Another attempt may succeed (connection errors, 5xx, timeouts).
    #[error("{0}")]
    Retryable(String),
    /// No attempt can succeed (bad input, a model server's 4xx); the task fails at once.
    #[error("{0}")]
    Permanent(String),
}

impl TaskError {
    /// A permanent error for input the task should not have been given.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// Whether the gateway may retry the task.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }
}

impl From<ModelError> for TaskError {
    fn from(e: ModelError) -> Self {
        if e.is_retryable() {
            Self::Retryable(e.to_string())
        } else {
            Self::Permanent(e.to_string())
        }
    }
}

/// Everything executors share. Built once per worker.
#[derive(Clone)]
pub struct Executors {
    /// Model servers by backend name.
    pub models: ModelBackends,
    /// Where dependency outputs are read from.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Executor settings.
    pub config: Arc<ExecutorConfig>,
    /// HTTP client for non-model calls (remote retrieval, model downloads).
    pub http: reqwest::Client,
    /// The gateway, for dependency outputs this worker cannot read locally (inline outputs,
    /// or artifacts written on another host).
    pub gateway: Option<GatewayClient>,
}

impl Executors {
    /// Runs one attempt of `task`. Dropping the future cancels it: HTTP requests are
    /// abandoned and child processes killed.
    ///
    /// # Errors
    /// The attempt's failure, classified.
    #[tracing::instrument(level = "info", skip_all, name = "executor.run", fields(task_type = task.task_type.as_str()))]
    pub async fn run(&self, task: &Assignment) -> Result<Value, TaskError> {
        match task.task_type {
            TaskType::LlmInference => llm::run(self, task).await,
            TaskType::Embedding => embedding::run(self, task).await,
            TaskType::Retrieval => retrieval::run(self, task).await,
            TaskType::Aggregation => aggregation::run(self, task).await,
            TaskType::ToolExecution => tool::run(self, task).await,
            TaskType::ModelDownload => model_download::run(self, task).await,
        }
    }

    /// The backend a task is routed to: its `backend` constraint, else its `backend` input,
    /// else the worker's default.
    ///
    /// # Errors
    /// A backend this worker does not offer, or none at all.
    pub fn backend_for(&self, task: &Assignment) -> Result<&Arc<dyn ModelBackend>, TaskError> {
        let named = task
            .constraints
            .backend
            .clone()
            .or_else(|| input_str(task, "backend"));
        match named {
            Some(name) => self.models.get(&name).ok_or_else(|| {
                // Another worker may offer it; the scheduler only routes by hard constraints.
                TaskError::Retryable(format!(
                    "backend `{name}` is not offered by this worker (it offers: {})",
                    self.models.names().join(", ")
                ))
            }),
            None => self.models.default_backend().ok_or_else(|| {
                TaskError::Retryable(
                    "no model backend is configured on this worker: set SPLAI_OLLAMA_BASE_URL, \
                     SPLAI_OPENAI_BASE_URL (or another model server), or \
                     SPLAI_WORKER_BACKENDS=echo for development"
                        .to_owned(),
                )
            }),
        }
    }

    /// The model a task asks for: its `model` constraint, its `model` input, or its job's.
    pub fn model_for(&self, task: &Assignment) -> Option<String> {
        task.constraints
            .model
            .clone()
            .or_else(|| input_str(task, "model"))
            .or_else(|| task.model.clone())
    }
}

/// A string input, trimmed; `None` when absent, empty or not a string.
pub fn input_str(task: &Assignment, key: &str) -> Option<String> {
    task.inputs
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An input as text: strings as they are, anything else (but null) as compact JSON.
pub fn input_text(task: &Assignment, key: &str) -> Option<String> {
    match task.inputs.get(key)? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
