//! Model backends against the double: request shapes, answers, retries and classification.

use serde_json::json;
use splai_e2e::model_server::{self, MODELS, ModelServer};
use splai_worker::config::Endpoint;
use splai_worker::executor::TaskError;
use splai_worker::models::{
    ChatMessage, CompletionRequest, EmbeddingRequest, ModelBackend, ModelError, OllamaBackend,
};

use crate::{ollama, openai, unreachable_url};

fn user(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage {
        role: "user".into(),
        content: text.into(),
    }]
}

fn chat(text: &str) -> CompletionRequest {
    CompletionRequest {
        model: Some("llama3".into()),
        messages: user(text),
        max_tokens: Some(32),
        temperature: Some(0.1),
        ..Default::default()
    }
}

fn embed(texts: &[&str]) -> EmbeddingRequest {
    EmbeddingRequest {
        model: Some("nomic-embed-text".into()),
        inputs: texts.iter().map(|t| (*t).to_owned()).collect(),
        retries: None,
        dimensions: None,
    }
}

/// Messages go to `/api/chat` with Ollama's options; the answer, usage and reason come back.
#[tokio::test]
async fn ollama_chat_sends_messages_and_options() {
    let server = ModelServer::start().await;
    let c = ollama(&server, 0)
        .complete(&chat("hello there"))
        .await
        .unwrap();
    assert_eq!(c.text, "double: hello there");
    assert_eq!(c.model, "llama3");
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    let usage = c.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (2, 3, 5)
    );
    let sent = server.last_body("/api/chat").unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "hello there"}])
    );
    assert_eq!(sent["stream"], false);
    assert_eq!(
        sent["options"],
        json!({"num_predict": 32, "temperature": 0.1})
    );
}

/// A plain prompt goes to `/api/generate`; with no model named, the default is used.
#[tokio::test]
async fn ollama_plain_prompt_uses_generate_and_default_model() {
    let server = ModelServer::start().await;
    let req = CompletionRequest {
        messages: user("a plain prompt"),
        plain_prompt: true,
        ..Default::default()
    };
    let c = ollama(&server, 0).complete(&req).await.unwrap();
    assert_eq!(c.text, "double: a plain prompt");
    let sent = server.last_body("/api/generate").unwrap();
    assert_eq!(sent["prompt"], "a plain prompt");
    assert_eq!(sent["model"], "llama3-8b-q4");
    assert_eq!(server.requests("/api/chat"), 0);
}

/// `/api/embed` embeds all texts in one call, in order.
#[tokio::test]
async fn ollama_embed_returns_one_vector_per_text() {
    let server = ModelServer::start().await;
    let e = ollama(&server, 0).embed(&embed(&["a", "b"])).await.unwrap();
    assert_eq!(
        e.vectors,
        [model_server::vector_for("a"), model_server::vector_for("b")]
    );
    assert_eq!(
        server.last_body("/api/embed").unwrap()["input"],
        json!(["a", "b"])
    );
}

/// An Ollama without `/api/embed` (404) is asked `/api/embeddings` once per text.
#[tokio::test]
async fn ollama_embed_falls_back_to_the_legacy_endpoint_on_404() {
    let server = ModelServer::start().await;
    server.fail_next("/api/embed", 404, "404 page not found", 1);
    let e = ollama(&server, 0).embed(&embed(&["a", "b"])).await.unwrap();
    assert_eq!(
        e.vectors,
        [model_server::vector_for("a"), model_server::vector_for("b")]
    );
    assert_eq!(server.requests("/api/embeddings"), 2);
    assert_eq!(server.last_body("/api/embeddings").unwrap()["prompt"], "b");
}

/// `/api/tags` and `/v1/models` become the advertised inventory; an unreachable server none.
#[tokio::test]
async fn list_models_reads_inventories_and_tolerates_failure() {
    let server = ModelServer::start().await;
    assert_eq!(ollama(&server, 0).list_models().await, MODELS);
    assert_eq!(openai("vllm", &server, None, 0).list_models().await, MODELS);
    let gone = Endpoint {
        base_url: unreachable_url(),
        api_key: None,
    };
    let backend = OllamaBackend::new(reqwest::Client::new(), gone, None, 0);
    assert!(backend.list_models().await.is_empty());
}

/// OpenAI chat sends the bearer key and sampling options and reads choices and usage.
#[tokio::test]
async fn openai_chat_sends_key_and_reads_the_first_choice() {
    let server = ModelServer::start().await;
    let backend = openai("remote_api", &server, Some("sk-test"), 0);
    let c = backend.complete(&chat("hi")).await.unwrap();
    assert_eq!(c.text, "double: hi");
    assert_eq!(c.model, "llama3");
    assert_eq!(c.usage.unwrap().total_tokens, 3);
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    let path = "/v1/chat/completions";
    assert_eq!(
        server.last_authorization(path).as_deref(),
        Some("Bearer sk-test")
    );
    let sent = server.last_body(path).unwrap();
    assert_eq!(
        (sent["max_tokens"].clone(), sent["stream"].clone()),
        (json!(32), json!(false))
    );
}

/// OpenAI embeddings come back in input order.
#[tokio::test]
async fn openai_embeddings_follow_input_order() {
    let server = ModelServer::start().await;
    let e = openai("vllm", &server, None, 0)
        .embed(&embed(&["x", "y", "z"]))
        .await
        .unwrap();
    let expected: Vec<_> = ["x", "y", "z"]
        .iter()
        .map(|t| model_server::vector_for(t))
        .collect();
    assert_eq!(e.vectors, expected);
    assert_eq!(e.model, "nomic-embed-text");
}

/// Many completions at once share one backend and all get their own answer.
#[tokio::test]
async fn concurrent_completions_each_get_their_answer() {
    let server = ModelServer::start().await;
    let backend = openai("vllm", &server, None, 0);
    let prompts: Vec<String> = (0..64).map(|i| format!("prompt {i}")).collect();
    let requests: Vec<CompletionRequest> = prompts.iter().map(|p| chat(p)).collect();
    let answers = futures::future::join_all(requests.iter().map(|r| backend.complete(r))).await;
    for (prompt, answer) in prompts.iter().zip(answers) {
        assert_eq!(answer.unwrap().text, format!("double: {prompt}"));
    }
    assert_eq!(server.requests("/v1/chat/completions"), 64);
}

/// A 500 is retried and the next answer used.
#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = ModelServer::start().await;
    server.fail_next(
        "/v1/chat/completions",
        500,
        r#"{"error":{"message":"overloaded"}}"#,
        1,
    );
    let c = openai("vllm", &server, None, 1)
        .complete(&chat("again"))
        .await
        .unwrap();
    assert_eq!(c.text, "double: again");
    assert_eq!(server.requests("/v1/chat/completions"), 2);
}

/// Retries stop after the configured number; the error stays retryable for the gateway.
#[tokio::test]
async fn persistent_server_errors_give_up_after_the_retries() {
    let server = ModelServer::start().await;
    server.fail_next("/api/chat", 503, r#"{"error":"loading model"}"#, 5);
    let e = ollama(&server, 1).complete(&chat("x")).await.unwrap_err();
    assert_eq!(server.requests("/api/chat"), 2);
    assert!(
        matches!(&e, ModelError::Server { status: 503, message, .. } if message == "loading model"),
        "{e:?}"
    );
    assert!(TaskError::from(e).is_retryable());
}

/// A 400 fails at once, permanently, with the server's own message.
#[tokio::test]
async fn client_errors_fail_at_once_with_the_server_message() {
    let server = ModelServer::start().await;
    let body = r#"{"error":{"message":"max_tokens is too large","type":"invalid_request_error"}}"#;
    server.fail_next("/v1/chat/completions", 400, body, 1);
    let e = openai("openai", &server, Some("sk-test"), 3)
        .complete(&chat("x"))
        .await
        .unwrap_err();
    assert_eq!(server.requests("/v1/chat/completions"), 1);
    let task_error = TaskError::from(e);
    assert!(!task_error.is_retryable());
    let shown = task_error.to_string();
    assert!(
        shown.contains("400") && shown.contains("max_tokens is too large"),
        "{shown}"
    );
    assert!(!shown.contains("sk-test"), "{shown}");
}

/// An unreachable server is a retryable error naming the URL, never the key.
#[tokio::test]
async fn unreachable_servers_are_retryable() {
    let url = unreachable_url();
    let gone = Endpoint {
        base_url: url.clone(),
        api_key: Some(splai_worker::config::Secret::new("sk-hidden")),
    };
    let backend = splai_worker::models::OpenAiBackend::new(
        "remote_api",
        reqwest::Client::new(),
        gone,
        None,
        0,
    );
    let e = backend.complete(&chat("x")).await.unwrap_err();
    assert!(matches!(e, ModelError::Unreachable { .. }), "{e:?}");
    let task_error = TaskError::from(e);
    assert!(task_error.is_retryable());
    let shown = task_error.to_string();
    assert!(
        shown.contains(&url) && !shown.contains("sk-hidden"),
        "{shown}"
    );
}

/// A metered backend times each call under its backend and the answering model, and counts
/// failures by kind; the running gauge starts at 0.
#[tokio::test]
async fn metered_backends_record_latency_and_errors() {
    use splai_worker::metrics::WorkerMetrics;
    use splai_worker::models::ModelBackends;
    use std::sync::Arc;

    let server = ModelServer::start().await;
    let gone = Endpoint {
        base_url: unreachable_url(),
        api_key: None,
    };
    let metrics = Arc::new(WorkerMetrics::default());
    let backends = ModelBackends::new()
        .with(Arc::new(ollama(&server, 0)))
        .with(Arc::new(openai("vllm", &server, None, 0)))
        .metered(&metrics);
    let ok = backends.get("ollama").unwrap();
    ok.complete(&chat("a")).await.unwrap();
    ok.complete(&chat("b")).await.unwrap();
    let broken = ModelBackends::new()
        .with(Arc::new(OllamaBackend::new(
            reqwest::Client::new(),
            gone,
            None,
            0,
        )))
        .metered(&metrics);
    let err = broken.get("ollama").unwrap().complete(&chat("c")).await;
    assert!(
        matches!(err, Err(ModelError::Unreachable { .. })),
        "{err:?}"
    );

    let text = metrics.render();
    for line in [
        "worker_tasks_running 0",
        "worker_executor_duration_seconds_count{backend=\"ollama\",model=\"llama3\"} 3",
        "worker_model_errors_total{backend=\"ollama\",kind=\"unreachable\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    assert!(
        !text.contains("vllm"),
        "an unused backend has no series:\n{text}"
    );
}

/// Streams a completion, collecting the pieces handed on.
async fn streamed(
    backend: &dyn ModelBackend,
    req: &CompletionRequest,
) -> (Vec<String>, splai_worker::models::Completion) {
    let pieces = std::sync::Mutex::new(Vec::new());
    let c = backend
        .complete_streaming(req, &|t: &str| pieces.lock().unwrap().push(t.to_owned()))
        .await
        .unwrap();
    (pieces.into_inner().unwrap(), c)
}

/// Ollama streams NDJSON (`stream: true`): each piece is handed on, the last line's counts
/// and reason end up in the completion, as with the non-streaming call.
#[tokio::test]
async fn ollama_streaming_hands_on_each_piece() {
    let server = ModelServer::start().await;
    let (pieces, c) = streamed(&ollama(&server, 0), &chat("hello there")).await;
    assert_eq!(pieces, ["double: ", "hello ", "there"]);
    assert_eq!(c.text, "double: hello there");
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    assert_eq!(c.usage.unwrap().total_tokens, 5);
    assert_eq!(server.last_body("/api/chat").unwrap()["stream"], true);
}

/// An OpenAI-compatible server streams SSE chunks; usage comes from the include_usage chunk.
#[tokio::test]
async fn openai_streaming_hands_on_each_piece() {
    let server = ModelServer::start().await;
    let backend = openai("vllm", &server, None, 0);
    let (pieces, c) = streamed(&backend, &chat("hello there")).await;
    assert_eq!(pieces, ["double: ", "hello ", "there"]);
    assert_eq!(c.text, "double: hello there");
    assert_eq!(c.finish_reason.as_deref(), Some("stop"));
    assert_eq!(c.usage.unwrap().completion_tokens, 3);
    let sent = server.last_body("/v1/chat/completions").unwrap();
    assert_eq!(
        (
            sent["stream"].clone(),
            sent["stream_options"]["include_usage"].clone()
        ),
        (json!(true), json!(true))
    );
}

/// A refused streaming request is classified like any other call (no retry on 4xx).
#[tokio::test]
async fn streaming_rejection_is_permanent() {
    let server = ModelServer::start().await;
    server.fail_next(
        "/api/chat",
        404,
        r#"{"error":"model 'llama3' not found"}"#,
        1,
    );
    let e = ollama(&server, 2)
        .complete_streaming(&chat("hi"), &|_: &str| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ModelError::Rejected { status: 404, .. }), "{e}");
    assert_eq!(server.requests("/api/chat"), 1);
}
