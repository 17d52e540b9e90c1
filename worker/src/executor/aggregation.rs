//! `aggregation`: merges inline items and every dependency output into one report, keeping
//! the first value of each field and recording disagreements and where each field came from.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use splai_shared::engine::Assignment;

use super::deps::{self, is_dependency_key};
use super::inputs::{input, input_bool, input_json, string_list};
use super::{Executors, TaskError, input_str};

/// Most highlights in a report: enough to skim, few enough to read.
const MAX_HIGHLIGHTS: usize = 12;

/// One input to the merge.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    /// The dependency's task id, or `item-<n>` for inline items.
    id: String,
    /// The dependency's output, for inline items `None`.
    uri: Option<String>,
    fields: Map<String, Value>,
}

/// The merge of all sources.
#[derive(Debug, Default, PartialEq)]
struct Merged {
    /// Each field's first value.
    fields: Map<String, Value>,
    /// Later values that differ from the first, per field, each once.
    conflicts: Map<String, Value>,
    /// The sources that had each field.
    provenance: Map<String, Value>,
    /// Distinct non-empty string values, sorted, at most [`MAX_HIGHLIGHTS`].
    highlights: Vec<String>,
}

/// Merges the task's sources.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let required = required_fields(task)?;
    let strict = input_bool(task, "strict_dependencies")?.unwrap_or(true);
    let (sources, skipped) = collect_sources(ex, task, strict).await?;
    if sources.is_empty() {
        return Err(TaskError::invalid(
            "aggregation has nothing to merge: no `items` and no dependency outputs",
        ));
    }
    let merged = merge(&sources);
    let missing: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|f| !merged.fields.contains_key(*f))
        .collect();
    if !missing.is_empty() {
        return Err(TaskError::invalid(format!(
            "aggregation missing required fields: {}",
            missing.join(", ")
        )));
    }
    let mut out = json!({
        "mode": input_str(task, "mode").unwrap_or_else(|| "structured_report".to_owned()),
        "source_count": sources.len(),
        "result": {
            "merged_fields": merged.fields,
            "conflicts": merged.conflicts,
            "highlights": merged.highlights,
        },
        "provenance": merged.provenance,
        "sources": sources.iter().map(source_ref).collect::<Vec<_>>(),
    });
    if !skipped.is_empty() {
        out["skipped"] = Value::Array(skipped);
    }
    Ok(out)
}

/// Inline items, then each dependency output in task-id order; with `strict` off, outputs
/// that cannot be read are returned apart (as `skipped` entries) instead of failing.
async fn collect_sources(
    ex: &Executors,
    task: &Assignment,
    strict: bool,
) -> Result<(Vec<Source>, Vec<Value>), TaskError> {
    let mut sources = inline_items(task)?;
    let mut skipped = Vec::new();
    for dep in deps::dependencies(task) {
        match deps::load(ex, &dep).await {
            Ok(output) => sources.push(Source {
                fields: into_fields(output),
                id: dep.task_id,
                uri: Some(dep.uri),
            }),
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(task_id = %dep.task_id, error = %e, "skipping a dependency output");
                skipped.push(json!({
                    "source_task_id": dep.task_id,
                    "artifact_uri": dep.uri,
                    "error": e.to_string(),
                }));
            }
        }
    }
    Ok((sources, skipped))
}

/// `required_fields` (an array, or a comma-separated string), else `required_fields_json`.
fn required_fields(task: &Assignment) -> Result<Vec<String>, TaskError> {
    if let Some(v) = input(task, "required_fields") {
        return string_list("required_fields", v);
    }
    match input_json(task, "required_fields_json")? {
        Some(v) => string_list("required_fields_json", &v),
        None => Ok(Vec::new()),
    }
}

/// Inline `items` (an array of objects), else `items_json` (the same, JSON-encoded).
fn inline_items(task: &Assignment) -> Result<Vec<Source>, TaskError> {
    let value = match input(task, "items") {
        Some(v) => Some(v.clone()),
        None => input_json(task, "items_json")?,
    };
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(TaskError::invalid(format!(
                "`items` must be an array of objects, got {other}"
            )));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(fields) => Ok(Source {
                id: format!("item-{}", i + 1),
                uri: None,
                fields,
            }),
            other => Err(TaskError::invalid(format!(
                "items[{i}] must be an object, got {other}"
            ))),
        })
        .collect()
}

/// An output's fields; the runtime stores every output as an object, but a hand-written
/// artifact may not be one.
fn into_fields(output: Value) -> Map<String, Value> {
    match output {
        Value::Object(fields) => fields,
        other => Map::from_iter([("result".to_owned(), other)]),
    }
}

/// First value wins; `_`-prefixed (runtime metadata) and `dep:` keys and nulls are not data.
fn merge(sources: &[Source]) -> Merged {
    let mut merged = Merged::default();
    let mut highlights = BTreeSet::new();
    for source in sources {
        let data = source
            .fields
            .iter()
            .filter(|(k, v)| !k.starts_with('_') && !is_dependency_key(k) && !v.is_null());
        for (key, value) in data {
            push_unique(
                &mut merged.provenance,
                key,
                Value::String(source.id.clone()),
            );
            match merged.fields.get(key) {
                None => {
                    merged.fields.insert(key.clone(), value.clone());
                }
                Some(first) if first != value => {
                    push_unique(&mut merged.conflicts, key, value.clone());
                }
                Some(_) => {}
            }
            if let Some(s) = value.as_str().map(str::trim).filter(|s| !s.is_empty()) {
                highlights.insert(s.to_owned());
            }
        }
    }
    merged.highlights = highlights.into_iter().take(MAX_HIGHLIGHTS).collect();
    merged
}

/// Appends `value` to the array under `key` unless it is already there.
fn push_unique(map: &mut Map<String, Value>, key: &str, value: Value) {
    let entry = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(values) = entry
        && !values.contains(&value)
    {
        values.push(value);
    }
}

fn source_ref(s: &Source) -> Value {
    let mut v = json!({ "source_task_id": s.id });
    if let Some(uri) = &s.uri {
        v["artifact_uri"] = Value::String(uri.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::{a_task, executors, store_output};

    fn aggregation(inputs: Value) -> Assignment {
        a_task(TaskType::Aggregation, inputs)
    }

    fn source(id: &str, fields: Value) -> Source {
        Source {
            id: id.into(),
            uri: None,
            fields: into_fields(fields),
        }
    }

    /// The first value wins; differing later values are conflicts, each listed once.
    #[test]
    fn merge_keeps_first_values_and_records_conflicts() {
        let merged = merge(&[
            source("a", json!({"status": "ok", "n": 1, "_splai": {"x": 1}})),
            source(
                "b",
                json!({"status": "degraded", "n": 1, "dep:z:output_uri": "u"}),
            ),
            source("c", json!({"status": "degraded", "extra": null})),
        ]);
        assert_eq!(merged.fields, into_fields(json!({"status": "ok", "n": 1})));
        assert_eq!(
            merged.conflicts,
            into_fields(json!({"status": ["degraded"]}))
        );
        assert_eq!(
            merged.provenance,
            into_fields(json!({"status": ["a", "b", "c"], "n": ["a", "b"]}))
        );
        assert_eq!(merged.highlights, ["degraded", "ok"]);
    }

    /// Highlights are the sorted distinct strings, at most twelve.
    #[test]
    fn merge_caps_highlights_at_twelve() {
        let sources: Vec<Source> = (0..20)
            .map(|i| {
                source(
                    &format!("s{i}"),
                    json!({"k": format!("v{i:02}"), "blank": " "}),
                )
            })
            .collect();
        let merged = merge(&sources);
        let expected: Vec<String> = (0..12).map(|i| format!("v{i:02}")).collect();
        assert_eq!(merged.highlights, expected);
    }

    /// Missing required fields fail permanently, naming them in order.
    #[tokio::test]
    async fn missing_required_fields_fail_permanently() {
        let (ex, _dir) = executors(|_| {});
        for required in [json!(["a", "b", "c"]), json!("a, b,c")] {
            let task = aggregation(json!({"items": [{"b": 1}], "required_fields": required}));
            let e = run(&ex, &task).await.unwrap_err();
            assert_eq!(
                e,
                TaskError::Permanent("aggregation missing required fields: a, c".into())
            );
        }
        let task =
            aggregation(json!({"items_json": "[{\"a\": 1}]", "required_fields_json": "[\"a\"]"}));
        assert_eq!(
            run(&ex, &task).await.unwrap()["result"]["merged_fields"]["a"],
            1
        );
    }

    /// Dependency outputs join inline items, sorted by task id, with their URIs.
    #[tokio::test]
    async fn dependency_outputs_are_merged_with_provenance() {
        let (ex, _dir) = executors(|_| {});
        let b = store_output(&ex, "b", json!({"text": "second", "_splai": {}})).await;
        let a = store_output(&ex, "a", json!({"text": "first"})).await;
        let task = aggregation(json!({
            "items": [{"title": "t"}],
            "dep:b:output_uri": b,
            "dep:a:output_uri": a.clone(),
            "mode": "summary",
        }));
        let out = run(&ex, &task).await.unwrap();
        assert_eq!(out["mode"], "summary");
        assert_eq!(out["source_count"], 3);
        assert_eq!(
            out["result"]["merged_fields"],
            json!({"title": "t", "text": "first"})
        );
        assert_eq!(out["result"]["conflicts"], json!({"text": ["second"]}));
        assert_eq!(out["provenance"]["text"], json!(["a", "b"]));
        assert_eq!(out["sources"][0], json!({"source_task_id": "item-1"}));
        assert_eq!(
            out["sources"][1],
            json!({"source_task_id": "a", "artifact_uri": a})
        );
    }

    /// A missing dependency output fails a strict aggregation and is skipped otherwise.
    #[tokio::test]
    async fn strict_dependencies_decides_whether_missing_outputs_fail() {
        let (ex, _dir) = executors(|_| {});
        let inputs = |strict: bool| {
            json!({
                "items": [{"k": "v"}],
                "dep:gone:output_uri": "artifact://job-1/gone/output.json",
                "strict_dependencies": strict,
            })
        };
        let e = run(&ex, &aggregation(inputs(true))).await.unwrap_err();
        assert!(!e.is_retryable(), "{e}");
        let out = run(&ex, &aggregation(inputs(false))).await.unwrap();
        assert_eq!(out["source_count"], 1);
        assert_eq!(out["skipped"][0]["source_task_id"], "gone");
    }

    /// Nothing to merge is a permanent error.
    #[tokio::test]
    async fn no_sources_is_a_permanent_error() {
        let (ex, _dir) = executors(|_| {});
        let e = run(&ex, &aggregation(json!({}))).await.unwrap_err();
        assert!(
            !e.is_retryable() && e.to_string().contains("nothing to merge"),
            "{e}"
        );
    }
}
