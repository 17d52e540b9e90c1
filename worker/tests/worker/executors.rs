//! Executors through real HTTP: routing, what reaches the server, and cancellation.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use splai_e2e::model_server::{self, ModelServer};
use splai_shared::artifacts::ArtifactKey;
use splai_shared::domain::{JobId, TaskId, TaskType};
use splai_worker::executor::{Executors, TaskError};
use splai_worker::models::{EchoBackend, ModelBackends};

use crate::{a_task, endpoint, eventually, executors, ollama, openai};

fn ollama_only(server: &ModelServer) -> ModelBackends {
    ModelBackends::new().with(Arc::new(ollama(server, 0)))
}

async fn store_output(ex: &Executors, task_id: &str, output: serde_json::Value) -> String {
    let key = ArtifactKey::new(
        JobId::parse("job-1").unwrap(),
        TaskId::parse(task_id).unwrap(),
        "output.json",
    )
    .unwrap();
    let body = Bytes::from(serde_json::to_vec(&output).unwrap());
    ex.artifacts
        .put(&key, body, "application/json")
        .await
        .unwrap();
    key.uri()
}

/// A routed llm_inference reaches Ollama with the job's model and the retrieved context.
#[tokio::test]
async fn llm_inference_sends_model_and_context_to_ollama() {
    let server = ModelServer::start().await;
    let models = ModelBackends::new()
        .with(Arc::new(EchoBackend))
        .with(Arc::new(ollama(&server, 0)));
    let (ex, _dir) = executors(models, |_| {});
    let docs = json!({"documents": [{"id": "d1", "text": "SPLAI runs AI jobs."}]});
    let retrieve = store_output(&ex, "retrieve", docs).await;
    let mut task = a_task(
        TaskType::LlmInference,
        json!({"prompt": "What is SPLAI?", "dep:retrieve:output_uri": retrieve}),
    );
    task.constraints.backend = Some("ollama".into());
    task.model = Some("llama3-8b-q4".into());
    let out = ex.run(&task).await.unwrap();
    let prompt = "Context:\n1. SPLAI runs AI jobs.\n\nWhat is SPLAI?";
    assert_eq!(out["text"], format!("double: {prompt}"));
    assert_eq!(out["backend"], "ollama");
    assert_eq!(out["model"], "llama3-8b-q4");
    assert!(out.get("echo").is_none());
    let sent = server.last_body("/api/generate").unwrap();
    assert_eq!(
        (sent["model"].as_str(), sent["prompt"].as_str()),
        (Some("llama3-8b-q4"), Some(prompt))
    );
}

/// Dropping an attempt (the soft timeout) abandons its in-flight model request.
#[tokio::test]
async fn dropping_an_attempt_abandons_the_model_request() {
    let server = ModelServer::start().await;
    server.set_delay(Some(Duration::from_secs(30)));
    let (ex, _dir) = executors(ollama_only(&server), |_| {});
    let task = a_task(
        TaskType::LlmInference,
        json!({"messages": [{"role": "user", "content": "slow"}]}),
    );
    {
        let attempt = ex.run(&task);
        tokio::pin!(attempt);
        let arrived = eventually("the request arrives", || server.requests("/api/chat") == 1);
        tokio::select! {
            r = &mut attempt => panic!("the request should still be pending: {r:?}"),
            () = arrived => {}
        }
        // The attempt is dropped here, its request unanswered.
    }
    eventually("the double sees the request dropped", || {
        server.dropped() == 1
    })
    .await;
}

/// A model server's 4xx fails the task permanently, carrying the server's message.
#[tokio::test]
async fn llm_inference_rejected_by_the_server_is_permanent() {
    let server = ModelServer::start().await;
    server.fail_next(
        "/api/generate",
        400,
        r#"{"error":"model 'nope' not found"}"#,
        1,
    );
    let (ex, _dir) = executors(ollama_only(&server), |_| {});
    let task = a_task(
        TaskType::LlmInference,
        json!({"prompt": "x", "model": "nope"}),
    );
    let e = ex.run(&task).await.unwrap_err();
    assert!(
        matches!(&e, TaskError::Permanent(m) if m.contains("model 'nope' not found")),
        "{e:?}"
    );
}

/// Embeddings route to the named OpenAI-compatible backend with the configured model.
#[tokio::test]
async fn embedding_uses_the_named_backend_and_configured_model() {
    let server = ModelServer::start().await;
    let models = ModelBackends::new()
        .with(Arc::new(EchoBackend))
        .with(Arc::new(openai("vllm", &server, None, 0)));
    let (ex, _dir) = executors(models, |c| c.embedding_model = "bge-small".into());
    let task = a_task(
        TaskType::Embedding,
        json!({"texts": ["a", "b"], "backend": "vllm"}),
    );
    let out = ex.run(&task).await.unwrap();
    assert_eq!(out["backend"], "vllm");
    assert_eq!(out["model"], "bge-small");
    assert_eq!(out["dimension"], model_server::DIMENSION);
    assert_eq!(out["vectors"][1], json!(model_server::vector_for("b")));
    assert_eq!(
        server.last_body("/v1/embeddings").unwrap()["model"],
        "bge-small"
    );
}

/// With SPLAI_RETRIEVAL_BACKEND=remote_api the documents are ranked by the remote service.
#[tokio::test]
async fn remote_retrieval_posts_query_and_documents() {
    let server = ModelServer::start().await;
    let (ex, _dir) = executors(ollama_only(&server), |c| {
        c.retrieval_backend = "remote_api".into();
        c.retrieval_remote = Some(endpoint(&server, Some("rk")));
    });
    let task = a_task(
        TaskType::Retrieval,
        json!({"query": "q", "documents": ["one", "two", "three"], "top_k": 2}),
    );
    let out = ex.run(&task).await.unwrap();
    assert_eq!(out["backend"], "remote_api");
    let ids: Vec<_> = out["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!("doc-1"), json!("doc-2")]);
    let sent = server.last_body("/v1/retrieve").unwrap();
    assert_eq!(
        (sent["query"].clone(), sent["top_k"].clone()),
        (json!("q"), json!(2))
    );
    assert_eq!(
        server.last_authorization("/v1/retrieve").as_deref(),
        Some("Bearer rk")
    );
}
