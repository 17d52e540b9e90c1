//! The OpenAI-compatible API (`SPLAI_OPENAI_COMPAT=true`) end to end: `splai serve`, a real
//! `splai-worker`, and the model-server double behind it; and the official `openai` Python
//! client against the same.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use splai_e2e::SplaiServer;
use splai_e2e::model_server::{ModelServer, vector_for};

use crate::{Fabric, JOB_LIMIT, eventually_within, ollama};

const MODEL: &str = "llama3-8b-q4";

fn compat() -> Vec<(&'static str, &'static str)> {
    vec![("SPLAI_OPENAI_COMPAT", "true")]
}

/// Worker settings for the double as the only (OpenAI-compatible) backend.
fn openai_backend(double: &ModelServer) -> [(&'static str, &str); 2] {
    [
        ("SPLAI_WORKER_BACKENDS", "openai"),
        ("SPLAI_OPENAI_BASE_URL", double.url()),
    ]
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, value)
}

fn chat(content: &str, stream: bool) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// The only job of a fabric (OpenAI requests are its only jobs).
async fn the_job(fabric: &Fabric) -> Value {
    let list: Value = reqwest::get(format!("{}/v1/jobs", fabric.server.base))
        .await
        .expect("list jobs")
        .json()
        .await
        .expect("a job list");
    let jobs = list["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 1, "{list}");
    jobs[0].clone()
}

/// A chat completion is a SPLAI job answered in the OpenAI shape, usage included; the
/// Responses API answers the same conversation in its own shape.
#[tokio::test]
async fn chat_completion_and_response_answer_in_the_openai_shape() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&compat());
    let _worker = fabric.worker("w-oai", &ollama(&double)).await;
    let base = &fabric.server.base;

    let (status, headers, body) =
        post(base, "/v1/chat/completions", &chat("hello there", false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "double: hello there"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The double counts words: 2 + 2 in the prompt, 3 in the answer.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
    let job = headers["x-splai-job-id"].to_str().unwrap().to_owned();
    assert_eq!(body["id"], format!("chatcmpl-{job}"));
    assert!(body["created"].as_i64().unwrap() > 1_700_000_000);
    let sent = double.last_body("/api/chat").expect("the double was asked");
    assert_eq!(sent["model"], MODEL);
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(fabric.api.job(&job).await["status"], "Completed");

    let req = json!({"model": MODEL, "input": "what now", "instructions": "be brief"});
    let (status, _, body) = post(base, "/v1/responses", &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["output_text"], "double: what now");
    assert_eq!(body["output"][0]["content"][0]["text"], "double: what now");
    assert_eq!(body["usage"]["output_tokens"], 3);
}

/// Reads a Server-Sent Events body to its end: the `data:` payloads in order.
async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.expect("the stream");
    text.split("\n\n")
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|d| d.trim().to_owned())
        })
        .collect()
}

async fn streamed_chat(backend: &str) {
    let double = ModelServer::start().await;
    // Each piece comes a while after the last, as a model's tokens do.
    double.set_stream_pace(Duration::from_millis(150));
    let fabric = Fabric::start(&compat());
    let env = if backend == "ollama" {
        ollama(&double)
    } else {
        openai_backend(&double)
    };
    let _worker = fabric.worker("w-stream", &env).await;
    let prompt = "one two three four";

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", fabric.server.base))
        .json(&chat(prompt, true))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(resp).await;

    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(contents.concat(), format!("double: {prompt}"), "{chunks:?}");
    assert!(
        contents.len() >= 2,
        "the answer came in several chunks: {contents:?}"
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 5, "{chunks:?}");
    // The worker asked the model server to stream.
    let path = if backend == "ollama" {
        "/api/chat"
    } else {
        "/v1/chat/completions"
    };
    assert_eq!(double.last_body(path).unwrap()["stream"], true);
}

/// `stream=true` relays the model's tokens (streamed from an Ollama server) as several
/// `chat.completion.chunk` events, then the finish reason, the usage and `[DONE]`.
#[tokio::test]
async fn streamed_chat_relays_ollama_tokens_as_chunks_then_done() {
    streamed_chat("ollama").await;
}

/// The same with an OpenAI-compatible server streaming SSE to the worker.
#[tokio::test]
async fn streamed_chat_relays_openai_server_tokens_as_chunks_then_done() {
    streamed_chat("openai").await;
}

/// Embeddings come back as the model's vectors, as floats or base64 of little-endian f32.
#[tokio::test]
async fn embeddings_answer_in_the_openai_shape() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&compat());
    let _worker = fabric.worker("w-embed", &ollama(&double)).await;
    let base = &fabric.server.base;

    let req = json!({"model": "nomic-embed-text", "input": ["alpha", "beta gamma"]});
    let (status, _, body) = post(base, "/v1/embeddings", &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "nomic-embed-text");
    for (i, text) in ["alpha", "beta gamma"].iter().enumerate() {
        assert_eq!(body["data"][i]["index"], i);
        assert_eq!(body["data"][i]["object"], "embedding");
        let got: Vec<f32> = serde_json::from_value(body["data"][i]["embedding"].clone()).unwrap();
        assert_eq!(got, vector_for(text));
    }
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(
        double.last_body("/api/embed").unwrap()["model"],
        "nomic-embed-text"
    );

    let req = json!({"model": "nomic-embed-text", "input": "alpha", "encoding_format": "base64"});
    let (status, _, body) = post(base, "/v1/embeddings", &req).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"][0]["embedding"].is_string(), "{body}");
}

/// `GET /v1/models` lists the healthy workers' inventories and the routing file's models;
/// a chat is routed like any job (the routing file's backend lands on its task).
#[tokio::test]
async fn models_list_inventories_and_routing_and_chats_are_routed() {
    let double = ModelServer::start().await;
    let files = tempfile::tempdir().unwrap();
    let routing = files.path().join("routing.yaml");
    std::fs::write(
        &routing,
        "default_backend: ollama\ndefault_model: routed-default\nrules:\n  - latency_class: batch\n    use_model: routed-batch\n",
    )
    .unwrap();
    let mut env = compat();
    env.push(("SPLAI_MODEL_ROUTING_FILE", routing.to_str().unwrap()));
    let fabric = Fabric::start(&env);
    let _worker = fabric.worker("w-models", &ollama(&double)).await;

    let list: Value = reqwest::get(format!("{}/v1/models", fabric.server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "llama3-8b-q4",
            "nomic-embed-text",
            "routed-batch",
            "routed-default"
        ]
    );
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model")
    );

    let (status, headers, body) = post(
        &fabric.server.base,
        "/v1/chat/completions",
        &chat("hi", false),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let job = headers["x-splai-job-id"].to_str().unwrap();
    let task = fabric.api.task(job, "generate").await;
    assert_eq!(task["constraints"]["backend"], "ollama", "{task}");
    assert_eq!(
        task["constraints"]["model"], MODEL,
        "the request's model wins: {task}"
    );
}

fn assert_openai_error(body: &Value, kind: &str) {
    let e = &body["error"];
    assert_eq!(e["type"], kind, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e.get("param").is_some_and(Value::is_null), "{body}");
    assert!(e["code"].is_string(), "{body}");
}

/// Every error of the OpenAI routes has the OpenAI shape: bad JSON, a missing field, an
/// unsupported option, a wrong method, no token, a token without the scope.
#[tokio::test]
async fn errors_have_the_openai_shape() {
    let tokens = [
        ("SPLAI_OPENAI_COMPAT", "true"),
        ("SPLAI_API_TOKENS", "submitter:job:submit,reader:job:read"),
    ];
    let fabric = Fabric::start(&tokens);
    let base = &fabric.server.base;
    let http = reqwest::Client::new();
    let call = |req: reqwest::RequestBuilder| async move {
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("a JSON error"))
    };
    let url = format!("{base}/v1/chat/completions");

    let (status, body) = call(http.post(&url).json(&chat("hi", false))).await;
    assert_eq!(status, 401);
    assert_openai_error(&body, "authentication_error");
    let (status, body) = call(
        http.post(&url)
            .bearer_auth("reader")
            .json(&chat("hi", false)),
    )
    .await;
    assert_eq!(status, 403);
    assert_openai_error(&body, "permission_error");
    let (status, body) = call(http.post(&url).bearer_auth("submitter").body("{not json")).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, "invalid_request_error");
    let (status, body) = call(
        http.post(&url)
            .bearer_auth("submitter")
            .json(&json!({"model": MODEL})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{body}"
    );
    assert_openai_error(&body, "invalid_request_error");
    let n2 = json!({"model": MODEL, "n": 2, "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = call(http.post(&url).bearer_auth("submitter").json(&n2)).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, "invalid_request_error");
    let (status, body) = call(http.get(&url).bearer_auth("submitter")).await;
    assert_eq!(status, 405);
    assert_openai_error(&body, "invalid_request_error");
    let (status, body) = call(
        http.get(format!("{base}/v1/models"))
            .bearer_auth("submitter"),
    )
    .await;
    assert_eq!(status, 403);
    assert_openai_error(&body, "permission_error");
    // Nothing was submitted by any of them.
    let list: Value = http
        .get(format!("{base}/v1/jobs"))
        .bearer_auth("reader")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["jobs"], json!([]), "{list}");

    // Without SPLAI_OPENAI_COMPAT the routes do not exist.
    let off = Fabric::start(&[]);
    let resp = http
        .post(format!("{}/v1/chat/completions", off.server.base))
        .json(&chat("hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// A job that does not finish within SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS is answered with an
/// OpenAI-shaped timeout and canceled.
#[tokio::test]
async fn timeout_answers_504_and_cancels_the_job() {
    let double = ModelServer::start().await;
    let mut env = compat();
    env.push(("SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS", "1"));
    let fabric = Fabric::start(&env);
    let _worker = fabric.worker("w-slow", &ollama(&double)).await;
    // Slow from now on (the worker listed its models at start-up).
    double.set_delay(Some(Duration::from_secs(20)));

    let (status, _, body) = post(
        &fabric.server.base,
        "/v1/chat/completions",
        &chat("slow", false),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert_openai_error(&body, "timeout_error");
    let job = the_job(&fabric).await;
    assert_eq!(job["status"], "Canceled", "{job}");
    assert_eq!(
        double.requests("/api/chat"),
        1,
        "the model was asked, and it was slow"
    );
}

/// A client that disconnects while waiting cancels its job, which stops the model call.
#[tokio::test]
async fn disconnecting_client_cancels_its_job() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[
        ("SPLAI_OPENAI_COMPAT", "true"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
        ("SPLAI_LEASE_SECONDS", "5"),
    ]);
    let _worker = fabric.worker("w-gone", &ollama(&double)).await;
    double.set_delay(Some(Duration::from_secs(60)));

    for stream in [false, true] {
        let before = double.requests("/api/chat");
        let url = format!("{}/v1/chat/completions", fabric.server.base);
        let body = chat("wait for me", stream);
        let client = tokio::spawn(async move {
            let resp = reqwest::Client::new().post(url).json(&body).send().await;
            // Streaming: the headers arrive at once; hold the body open until aborted.
            if let Ok(resp) = resp {
                let _ = resp.text().await;
            }
        });
        eventually_within(JOB_LIMIT, "the model call starts", || {
            std::future::ready(double.requests("/api/chat") > before)
        })
        .await;
        client.abort();
        let _ = client.await;
        let list_url = format!("{}/v1/jobs?status=Canceled", fabric.server.base);
        eventually_within(JOB_LIMIT, "the job is canceled", || {
            let url = list_url.clone();
            async move {
                let list: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
                list["jobs"]
                    .as_array()
                    .is_some_and(|j| j.len() == usize::from(stream) + 1)
            }
        })
        .await;
    }
    // The worker stopped the abandoned model calls.
    eventually_within(JOB_LIMIT, "the model calls are dropped", || {
        std::future::ready(double.dropped() == 2)
    })
    .await;
}

/// Under `splai dev` with no model server, any model name is answered by the echo backend.
#[tokio::test]
async fn dev_answers_any_model_with_echo() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("artifacts");
    let server = SplaiServer::start_dev(
        &dir.path().join("dev.db"),
        &[("SPLAI_ARTIFACT_ROOT", root.to_str().unwrap())],
    );
    let req =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi there"}]});
    let (status, _, body) = post(&server.base, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "[echo] hi there");
    assert_eq!(body["model"], "gpt-4o-mini");
}

/// The official `openai` Python client (`tests/python/openai_client.py`) runs a chat, a
/// streamed chat and an embedding against SPLAI with workers on the double. Skipped with a
/// reason when the package is missing, except under CI, where that fails.
#[tokio::test]
async fn official_openai_python_client_works() {
    let has_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `python3 -c \"import openai\"` fails: install it (python3 -m pip install openai)"
        );
        eprintln!(
            "SKIPPED official_openai_python_client_works: the `openai` Python package is not installed (python3 -m pip install openai)"
        );
        return;
    }
    let double = ModelServer::start().await;
    double.set_stream_pace(Duration::from_millis(50));
    let fabric = Fabric::start(&compat());
    let _worker = fabric.worker("w-py", &ollama(&double)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/openai_client.py");
    let base = format!("{}/v1", fabric.server.base);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("OPENAI_BASE_URL", &base)
            .env("OPENAI_API_KEY", "unused")
            .env("SPLAI_TEST_MODEL", MODEL)
            .env("SPLAI_TEST_EMBEDDING_MODEL", "nomic-embed-text")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{stderr}"
    );
    let report: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["chat"], "double: Say hello");
    assert_eq!(report["stream"], "double: Count one two three");
    assert!(report["stream_chunks"].as_u64().unwrap() >= 2, "{report}");
    let vector: Vec<f32> = serde_json::from_value(report["embedding"].clone()).unwrap();
    assert_eq!(vector, vector_for("embed me"));
}
