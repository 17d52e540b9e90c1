//! `embedding`: texts to vectors through a model backend, or `local` deterministic hash
//! vectors when no embedding model is wanted.

use std::sync::Arc;

use serde_json::{Value, json};
use splai_shared::engine::Assignment;

use super::inputs::{input, input_json, value_text};
use super::{Executors, TaskError, input_str};
use crate::models::{EchoBackend, EmbeddingRequest, ModelBackend};

/// The backend name that selects hash vectors computed on the worker.
const LOCAL: &str = "local";

/// How `local` vectors are labelled, so nobody mistakes them for a model's.
const LOCAL_MODEL: &str = "local-hash-v1";

/// Embeds the task's texts.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let texts = texts(task)?;
    let (backend_name, backend) = backend(ex, task)?;
    let local = backend_name == LOCAL;
    let model = input_str(task, "embedding_model")
        .or_else(|| ex.model_for(task))
        .unwrap_or_else(|| ex.config.embedding_model.clone());
    let request = EmbeddingRequest {
        model: (!local).then_some(model),
        inputs: texts,
        retries: Some(ex.config.embedding_retries),
        dimensions: Some(ex.config.embedding_dimension),
    };
    let answer = backend.embed(&request).await?;
    let dimension = validate(&backend_name, request.inputs.len(), &answer.vectors)?;
    let model = if local {
        LOCAL_MODEL.to_owned()
    } else {
        answer.model
    };
    let mut out = json!({
        "backend": backend_name,
        "model": model,
        "dimension": dimension,
        "text_count": request.inputs.len(),
        "vectors": answer.vectors,
        "usage": answer.usage,
    });
    if let [only] = answer.vectors.as_slice() {
        out["vector"] = json!(only);
    }
    Ok(out)
}

/// The texts: `texts`, `input` (where the planner puts the job's input), `text` or `prompt`
/// (each a string or an array), else `texts_json`, a JSON-encoded array.
fn texts(task: &Assignment) -> Result<Vec<String>, TaskError> {
    let given = ["texts", "input", "text", "prompt"]
        .iter()
        .find_map(|k| input(task, k).cloned());
    let value = match given {
        Some(v) => Some(v),
        None => input_json(task, "texts_json")?,
    };
    let texts: Vec<String> = match value {
        None => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(value_text).collect(),
        Some(other) => vec![value_text(&other)],
    };
    if texts.is_empty() {
        return Err(TaskError::invalid(
            "embedding has no text: set `texts`, `input`, `text`, `prompt` or `texts_json`",
        ));
    }
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(TaskError::invalid(format!("embedding text {i} is empty")));
    }
    Ok(texts)
}

/// The backend: the `embedding_backend` input, else the task's backend (constraint or
/// input), else SPLAI_EMBEDDING_BACKEND, else the worker's default; `local` is the hash
/// embedder.
fn backend(
    ex: &Executors,
    task: &Assignment,
) -> Result<(String, Arc<dyn ModelBackend>), TaskError> {
    let named = input_str(task, "embedding_backend")
        .or_else(|| task.constraints.backend.clone())
        .or_else(|| input_str(task, "backend"))
        .or_else(|| ex.config.embedding_backend.clone());
    match named {
        Some(name) if name.eq_ignore_ascii_case(LOCAL) => {
            Ok((LOCAL.to_owned(), Arc::new(EchoBackend)))
        }
        Some(name) => match ex.models.get(&name) {
            Some(b) => Ok((b.name().to_owned(), b.clone())),
            // Another worker may offer it.
            None => Err(TaskError::Retryable(format!(
                "embedding backend `{name}` is not offered by this worker (it offers: {}, and \
                 `local` hash vectors)",
                ex.models.names().join(", ")
            ))),
        },
        None => {
            let b = ex.backend_for(task)?;
            Ok((b.name().to_owned(), b.clone()))
        }
    }
}

/// Checks one non-empty, finite vector per text, all of one size; returns the size.
fn validate(backend: &str, texts: usize, vectors: &[Vec<f32>]) -> Result<usize, TaskError> {
    let bad = |what: String| {
        TaskError::Retryable(format!("embedding backend `{backend}` returned {what}"))
    };
    if vectors.len() != texts {
        return Err(bad(format!("{} vectors for {texts} texts", vectors.len())));
    }
    let dimension = vectors.first().map_or(0, Vec::len);
    for (i, v) in vectors.iter().enumerate() {
        if v.is_empty() || v.len() != dimension {
            return Err(bad(format!(
                "a vector of size {} for text {i} (expected {dimension}, non-zero)",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(bad(format!(
                "a non-finite value in the vector for text {i}"
            )));
        }
    }
    Ok(dimension)
}

#[cfg(test)]
mod tests {
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::{a_task, executors};

    fn embedding(inputs: Value) -> Assignment {
        a_task(TaskType::Embedding, inputs)
    }

    /// Texts come from arrays, single strings, stringified JSON, or `texts_json`.
    #[test]
    fn texts_are_read_from_every_accepted_input() {
        let cases = [
            (json!({"texts": ["a", "b"]}), vec!["a", "b"]),
            (json!({"input": "job input"}), vec!["job input"]),
            (json!({"input": ["x", 1]}), vec!["x", "1"]),
            (json!({"text": {"k": "v"}}), vec![r#"{"k":"v"}"#]),
            (json!({"texts_json": "[\"p\", \"q\"]"}), vec!["p", "q"]),
        ];
        for (inputs, expected) in cases {
            assert_eq!(
                texts(&embedding(inputs.clone())).unwrap(),
                expected,
                "{inputs}"
            );
        }
    }

    /// No text, or a blank one, is a permanent error.
    #[test]
    fn missing_or_blank_text_is_permanent() {
        for inputs in [
            json!({}),
            json!({"texts": []}),
            json!({"texts": ["a", " "]}),
        ] {
            let e = texts(&embedding(inputs)).unwrap_err();
            assert!(!e.is_retryable(), "{e}");
        }
    }

    /// `local` gives deterministic hash vectors of the configured size, labelled as such.
    #[tokio::test]
    async fn local_backend_returns_labelled_hash_vectors() {
        let (ex, _dir) = executors(|c| c.embedding_dimension = 16);
        let task = embedding(json!({"input": "hello", "embedding_backend": "local"}));
        let out = run(&ex, &task).await.unwrap();
        assert_eq!(out["backend"], "local");
        assert_eq!(out["model"], "local-hash-v1");
        assert_eq!(out["dimension"], 16);
        assert_eq!(out["text_count"], 1);
        assert_eq!(out["vector"], out["vectors"][0]);
        assert_eq!(run(&ex, &task).await.unwrap()["vector"], out["vector"]);
    }

    /// SPLAI_EMBEDDING_BACKEND applies when the task names no backend; an unknown one is
    /// left for another worker (retryable).
    #[tokio::test]
    async fn configured_backend_is_used_and_unknown_ones_are_retryable() {
        let (ex, _dir) = executors(|c| c.embedding_backend = Some("local".into()));
        let out = run(&ex, &embedding(json!({"texts": ["a", "b"]})))
            .await
            .unwrap();
        assert_eq!(out["backend"], "local");
        assert!(out.get("vector").is_none());
        let task = embedding(json!({"texts": ["a"], "embedding_backend": "vllm"}));
        assert!(run(&ex, &task).await.unwrap_err().is_retryable());
    }

    /// Vectors of the wrong count, size or with NaN are rejected.
    #[test]
    fn validate_rejects_malformed_vectors() {
        assert_eq!(validate("b", 1, &[vec![0.5, 0.5]]).unwrap(), 2);
        assert!(validate("b", 2, &[vec![0.5]]).is_err());
        assert!(validate("b", 1, &[vec![]]).is_err());
        assert!(validate("b", 2, &[vec![0.5], vec![0.5, 0.1]]).is_err());
        assert!(validate("b", 1, &[vec![f32::NAN]]).is_err());
    }
}
