//! Dependency outputs: the `dep:<task_id>:output_uri` inputs the gateway adds for each
//! completed dependency, and reading them back from the artifact store.

use serde_json::Value;
use splai_shared::artifacts::ArtifactError;
use splai_shared::engine::Assignment;

use super::{Executors, TaskError};

/// One dependency of a task: which task produced it and where its output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Dependency {
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
    let bytes = ex.artifacts.get(&dep.uri).await.map_err(|e| {
        let what = format!("output of dependency `{}` ({})", dep.task_id, dep.uri);
        match e {
            ArtifactError::NotFound(_) | ArtifactError::InvalidUri(_) => {
                TaskError::Permanent(format!("cannot read the {what}: {e}"))
            }
            // Unavailable, and kinds added later: another attempt may find the store healthy.
            _ => TaskError::Retryable(format!("cannot read the {what}: {e}")),
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        TaskError::Permanent(format!(
            "the output of dependency `{}` ({}) is not JSON: {e}",
            dep.task_id, dep.uri
        ))
    })
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
            task_id: "a".into(),
            uri,
        };
        assert_eq!(load(&ex, &found).await.unwrap()["text"], "hi");
        let missing = Dependency {
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
