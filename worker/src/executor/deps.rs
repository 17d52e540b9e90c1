//! Dependency outputs: the `dep:<task_id>:output_uri` inputs the gateway adds for each
//! completed dependency, and reading them back from the artifact store.

use serde_json::Value;
use splai_shared::artifacts::ArtifactError;
use splai_shared::engine::Assignment;

use super::{Executors, TaskError};
use crate::client::GatewayError;

/// One dependency of a task: which task produced it and where its output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dependency {
    /// The job (the task's own: dependencies are within a job).
    pub job_id: String,
    /// The producing task.
    pub task_id: String,
    /// `artifact://<job>/<task>/output.json`.
    pub uri: String,
}

/// A dependency's decoded output.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct DependencyOutput {
    /// Where it came from.
    pub dependency: Dependency,
    /// The producing executor's JSON output (with the runtime's `_splai` envelope).
    pub output: Value,
}

/// The task's dependencies, sorted by task id; `null` entries (no output) are skipped.
pub(super) fn dependencies(task: &Assignment) -> Vec<Dependency> {
    let mut out: Vec<Dependency> = task
        .inputs
        .iter()
        .filter_map(|(key, value)| {
            let task_id = key.strip_prefix("dep:")?.strip_suffix(":output_uri")?;
            let uri = match value {
                Value::Null => return None,
                Value::String(s) => s.clone(),
                // Not a URI: the artifact store rejects it with a message naming it.
                other => other.to_string(),
            };
            Some(Dependency {
                job_id: task.job_id.to_string(),
                task_id: task_id.to_owned(),
                uri,
            })
        })
        .collect();
    out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    out
}

/// Whether an input key is a dependency reference (never task data).
pub(super) fn is_dependency_key(key: &str) -> bool {
    key.starts_with("dep:")
}

/// Reads and decodes one dependency's output.
///
/// # Errors
/// `Permanent` when the output does not exist or is not JSON, `Retryable` when the artifact
/// store could not be read.
pub(super) async fn load(ex: &Executors, dep: &Dependency) -> Result<Value, TaskError> {
    let what = || format!("output of dependency `{}` ({})", dep.task_id, dep.uri);
    let bytes = match ex.artifacts.get(&dep.uri).await {
        Ok(bytes) => bytes,
        // Not in this worker's store: inline in the task record, or written on another
        // host. The gateway serves both.
        Err(ArtifactError::NotFound(_)) if ex.gateway.is_some() => from_gateway(ex, dep)
            .await
            .map_err(|e| classify(&what(), e))?,
        Err(e @ (ArtifactError::NotFound(_) | ArtifactError::InvalidUri(_))) => {
            return Err(TaskError::Permanent(format!(
                "cannot read the {}: {e}",
                what()
            )));
        }
        // Unavailable, and kinds added later: another attempt may find the store healthy.
        Err(e) => {
            return Err(TaskError::Retryable(format!(
                "cannot read the {}: {e}",
                what()
            )));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        TaskError::Permanent(format!(
            "the output of dependency `{}` ({}) is not JSON: {e}",
            dep.task_id, dep.uri
        ))
    })
}

/// Reads a dependency's output through the gateway's task output endpoint.
async fn from_gateway(ex: &Executors, dep: &Dependency) -> Result<bytes::Bytes, GatewayError> {
    match &ex.gateway {
        Some(gateway) => gateway.task_output(&dep.job_id, &dep.task_id).await,
        None => Err(GatewayError::Rejected {
            status: 404,
            message: "no gateway to ask".to_owned(),
        }),
    }
}

fn classify(what: &str, e: GatewayError) -> TaskError {
    if e.is_transient() {
        TaskError::Retryable(format!("cannot read the {what} from the gateway: {e}"))
    } else {
        TaskError::Permanent(format!("cannot read the {what} from the gateway: {e}"))
    }
}

/// Reads every dependency's output, in task-id order.
///
/// # Errors
/// The first dependency that cannot be read, as [`load`] classifies it.
pub(super) async fn load_all(
    ex: &Executors,
    task: &Assignment,
) -> Result<Vec<DependencyOutput>, TaskError> {
    let mut out = Vec::new();
    for dependency in dependencies(task) {
        let output = load(ex, &dependency).await?;
        out.push(DependencyOutput { dependency, output });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::executor::testing::{a_task, executors, store_output};
    use splai_shared::domain::TaskType;

    /// Dependency inputs are found by key shape, sorted by task id, and nulls skipped.
    #[test]
    fn dependencies_are_sorted_and_skip_nulls() {
        let task = a_task(
            TaskType::Aggregation,
            json!({
                "dep:b:output_uri": "artifact://j/b/output.json",
                "dep:a:1:output_uri": "artifact://j/a:1/output.json",
                "dep:c:output_uri": null,
                "prompt": "not a dependency",
            }),
        );
        let ids: Vec<_> = dependencies(&task).into_iter().map(|d| d.task_id).collect();
        assert_eq!(ids, ["a:1", "b"]);
    }

    /// A missing output is permanent; an existing one is decoded.
    #[tokio::test]
    async fn load_reads_outputs_and_fails_permanently_when_missing() {
        let (ex, _dir) = executors(|_| {});
        let uri = store_output(&ex, "a", json!({"text": "hi"})).await;
        let found = Dependency {
            job_id: "job-1".into(),
            task_id: "a".into(),
            uri,
        };
        assert_eq!(load(&ex, &found).await.unwrap()["text"], "hi");
        let missing = Dependency {
            job_id: "job-1".into(),
            task_id: "b".into(),
            uri: "artifact://job-1/b/output.json".into(),
        };
        let e = load(&ex, &missing).await.unwrap_err();
        assert!(
            matches!(e, TaskError::Permanent(ref m) if m.contains("`b`")),
            "{e:?}"
        );
    }
}
