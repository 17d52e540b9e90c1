//! `retrieval`: ranks the documents a task supplies against its query, on the worker (a
//! hybrid of hashed bag-of-words cosine and token overlap) or through a remote service.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use splai_shared::engine::Assignment;

use super::inputs::{input, input_json, input_u64, value_text};
use super::{Executors, TaskError, input_text};
use crate::models::http::{self, JsonCall};

/// Documents returned when the task sets no `top_k`.
const DEFAULT_TOP_K: u64 = 5;

/// Size of the hashed bag-of-words vectors: large enough that collisions between the words of
/// a query and a short document are rare.
const BUCKETS: usize = 1024;

/// Weights of the hybrid score: meaning-ish (vector) over exact words (lexical).
const VECTOR_WEIGHT: f64 = 0.7;
const LEXICAL_WEIGHT: f64 = 0.3;

/// A document to rank.
#[derive(Debug, Clone, PartialEq)]
struct Document {
    id: String,
    text: String,
    metadata: Map<String, Value>,
}

/// A ranked document.
#[derive(Debug, Clone, PartialEq)]
struct Scored {
    document: Document,
    score: f64,
    vector_score: f64,
    lexical_score: f64,
}

#[derive(Deserialize)]
struct RemoteAnswer {
    documents: Vec<Value>,
}

/// Ranks the task's documents.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let query = ["query", "text", "prompt"]
        .iter()
        .find_map(|k| input_text(task, k))
        .unwrap_or_default();
    let documents = documents(task)?;
    let filters = filters(task)?;
    let top_k = input_u64(task, "top_k")?.unwrap_or(DEFAULT_TOP_K).max(1);
    let top_k = usize::try_from(top_k).unwrap_or(usize::MAX);
    let remote = matches!(
        ex.config.retrieval_backend.as_str(),
        "remote_api" | "remote"
    );
    let backend = if remote { "remote_api" } else { "local" };
    let found = if query.trim().is_empty() || documents.is_empty() {
        Vec::new()
    } else if remote {
        retrieve_remote(ex, &query, &documents, &filters, top_k).await?
    } else {
        let kept: Vec<Document> = documents
            .into_iter()
            .filter(|d| matches_filters(d, &filters))
            .collect();
        rank(&query, kept, top_k).into_iter().map(to_json).collect()
    };
    Ok(json!({
        "backend": backend,
        "query": query,
        "top_k": top_k,
        "filters": filters,
        "documents": found,
    }))
}

/// The documents: `documents` (an array of strings or `{id?, text, metadata?}` objects, or a
/// newline-separated string), else `documents_json` (the array, JSON-encoded).
fn documents(task: &Assignment) -> Result<Vec<Document>, TaskError> {
    let value = match input(task, "documents") {
        Some(v) => Some(v.clone()),
        None => input_json(task, "documents_json")?,
    };
    let plain = |i: usize, text: &str| Document {
        id: format!("doc-{}", i + 1),
        text: text.to_owned(),
        metadata: Map::new(),
    };
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, l)| plain(i, l))
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(plain(i, s)),
                Value::Object(o) => document_object(i, o),
                other => Err(TaskError::invalid(format!(
                    "documents[{i}] must be a string or an object with `text`, got {other}"
                ))),
            })
            .collect(),
        Some(other) => Err(TaskError::invalid(format!(
            "`documents` must be an array or a newline-separated string, got {other}"
        ))),
    }
}

fn document_object(i: usize, o: &Map<String, Value>) -> Result<Document, TaskError> {
    let text = o
        .get("text")
        .or_else(|| o.get("content"))
        .and_then(Value::as_str)
        .ok_or_else(|| TaskError::invalid(format!("documents[{i}] has no string `text`")))?;
    let metadata = match o.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(TaskError::invalid(format!(
                "documents[{i}].metadata must be an object, got {other}"
            )));
        }
    };
    let id = match o.get("id") {
        None | Some(Value::Null) => format!("doc-{}", i + 1),
        Some(v) => value_text(v),
    };
    Ok(Document {
        id,
        text: text.to_owned(),
        metadata,
    })
}

/// Metadata filters: `filters` (or `filters_json`), an object of required values.
fn filters(task: &Assignment) -> Result<Map<String, Value>, TaskError> {
    let value = match input(task, "filters") {
        Some(v) => Some(v.clone()),
        None => input_json(task, "filters_json")?,
    };
    match value {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(TaskError::invalid(format!(
            "`filters` must be an object of metadata values, got {other}"
        ))),
    }
}

/// Whether every filter names a metadata field holding that value (case-insensitively;
/// `2024` matches `"2024"`).
fn matches_filters(doc: &Document, filters: &Map<String, Value>) -> bool {
    filters.iter().all(|(key, want)| {
        doc.metadata
            .get(key)
            .is_some_and(|have| value_text(have).to_lowercase() == value_text(want).to_lowercase())
    })
}

/// The `top_k` best documents, best first; equal scores keep their original order.
fn rank(query: &str, documents: Vec<Document>, top_k: usize) -> Vec<Scored> {
    let query_tokens = tokens(query);
    let query_vector = hashed_vector(&query_tokens);
    let query_set: HashSet<&str> = query_tokens.iter().map(String::as_str).collect();
    let mut scored: Vec<Scored> = documents
        .into_iter()
        .map(|document| {
            let doc_tokens = tokens(&document.text);
            let vector_score = cosine(&query_vector, &hashed_vector(&doc_tokens));
            let doc_set: HashSet<&str> = doc_tokens.iter().map(String::as_str).collect();
            let lexical_score = if query_set.is_empty() {
                0.0
            } else {
                query_set.intersection(&doc_set).count() as f64 / query_set.len() as f64
            };
            Scored {
                document,
                score: VECTOR_WEIGHT * vector_score + LEXICAL_WEIGHT * lexical_score,
                vector_score,
                lexical_score,
            }
        })
        .collect();
    // A stable sort: ties stay in input order.
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(top_k);
    scored
}

/// Lower-cased runs of letters and digits.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Word counts hashed into [`BUCKETS`] buckets (FNV-1a: stable across runs and platforms).
fn hashed_vector(tokens: &[String]) -> Vec<f64> {
    let mut v = vec![0.0; BUCKETS];
    for t in tokens {
        let hash = t.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        v[(hash % BUCKETS as u64) as usize] += 1.0;
    }
    v
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

fn to_json(s: Scored) -> Value {
    json!({
        "id": s.document.id,
        "text": s.document.text,
        "score": s.score,
        "vector_score": s.vector_score,
        "lexical_score": s.lexical_score,
        "metadata": s.document.metadata,
    })
}

/// Asks the remote retrieval service (SPLAI_RETRIEVAL_BASE_URL) to rank the documents.
async fn retrieve_remote(
    ex: &Executors,
    query: &str,
    documents: &[Document],
    filters: &Map<String, Value>,
    top_k: usize,
) -> Result<Vec<Value>, TaskError> {
    let endpoint = ex.config.retrieval_remote.as_ref().ok_or_else(|| {
        // Configuration refuses remote_api without a URL; this is a worker set up by hand.
        TaskError::Permanent(
            "SPLAI_RETRIEVAL_BACKEND=remote_api needs SPLAI_RETRIEVAL_BASE_URL".into(),
        )
    })?;
    let call = JsonCall {
        backend: "retrieval",
        url: format!("{}/v1/retrieve", endpoint.base_url),
        api_key: endpoint.api_key.as_ref(),
        retries: ex.config.retrieval_retries,
    };
    let docs: Vec<Value> = documents
        .iter()
        .map(|d| json!({"id": d.id, "text": d.text, "metadata": d.metadata}))
        .collect();
    let body = json!({"query": query, "documents": docs, "filters": filters, "top_k": top_k});
    let mut answer: RemoteAnswer = http::post_json(&ex.http, &call, &body).await?;
    answer.documents.truncate(top_k);
    Ok(answer.documents)
}

#[cfg(test)]
mod tests {
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::{a_task, executors};

    fn retrieval(inputs: Value) -> Assignment {
        a_task(TaskType::Retrieval, inputs)
    }

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
            metadata: Map::new(),
        }
    }

    /// The document sharing the query's words ranks first, scores combine 0.7/0.3.
    #[test]
    fn rank_puts_matching_documents_first() {
        let docs = vec![
            doc("a", "bananas are yellow"),
            doc("b", "the capital of France is Paris"),
            doc("c", "Paris has many museums"),
        ];
        let ranked = rank("What is the capital of France, Paris?", docs, 2);
        let ids: Vec<_> = ranked.iter().map(|s| s.document.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        let best = &ranked[0];
        let expected = 0.7 * best.vector_score + 0.3 * best.lexical_score;
        assert!((best.score - expected).abs() < 1e-12);
        assert!(
            (best.lexical_score - 6.0 / 7.0).abs() < 1e-12,
            "{}",
            best.lexical_score
        );
    }

    /// Equal scores keep the documents' original order.
    #[test]
    fn rank_breaks_ties_by_original_order() {
        let docs = vec![doc("x", "alpha"), doc("y", "beta"), doc("z", "alpha")];
        let ids: Vec<_> = rank("alpha", docs, 5)
            .into_iter()
            .map(|s| s.document.id)
            .collect();
        assert_eq!(ids, ["x", "z", "y"]);
    }

    /// Documents come as strings, objects or lines, with generated ids where none is given.
    #[test]
    fn documents_accept_strings_objects_and_lines() {
        let task = retrieval(json!({"documents": [
            "plain",
            {"id": 7, "text": "with id", "metadata": {"lang": "en"}},
            {"content": "content key"},
        ]}));
        let docs = documents(&task).unwrap();
        let ids: Vec<_> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["doc-1", "7", "doc-3"]);
        assert_eq!(docs[1].metadata["lang"], "en");
        let lines = documents(&retrieval(json!({"documents": "one\n\n two \n"}))).unwrap();
        assert_eq!(lines, [doc("doc-1", "one"), doc("doc-2", "two")]);
        let encoded = retrieval(json!({"documents_json": "[\"a\", \"b\"]"}));
        assert_eq!(documents(&encoded).unwrap().len(), 2);
        assert!(documents(&retrieval(json!({"documents": [{"id": "x"}]}))).is_err());
    }

    /// Filters match metadata exactly but case-insensitively, numbers as text.
    #[tokio::test]
    async fn filters_keep_only_matching_metadata() {
        let (ex, _dir) = executors(|_| {});
        let task = retrieval(json!({
            "query": "report",
            "documents": [
                {"id": "a", "text": "report one", "metadata": {"team": "Ops", "year": 2024}},
                {"id": "b", "text": "report two", "metadata": {"team": "dev", "year": 2024}},
                {"id": "c", "text": "report three"},
            ],
            "filters": {"team": "OPS", "year": "2024"},
        }));
        let out = run(&ex, &task).await.unwrap();
        assert_eq!(out["backend"], "local");
        let docs = out["documents"].as_array().unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0]["id"], "a");
        assert_eq!(docs[0]["metadata"]["team"], "Ops");
        assert_eq!(out["top_k"], 5);
    }

    /// No documents or an empty query is an empty result, not an error.
    #[tokio::test]
    async fn nothing_to_search_is_an_empty_result() {
        let (ex, _dir) = executors(|_| {});
        for inputs in [json!({"query": "q"}), json!({"documents": ["a"]})] {
            let out = run(&ex, &retrieval(inputs)).await.unwrap();
            assert_eq!(out["documents"], json!([]));
        }
    }
}
