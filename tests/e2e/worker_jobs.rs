//! Jobs of each kind run by the real `splai-worker` against a real `splai serve` and the
//! model-server double: what the model saw, what the client downloads, how failures end.

use std::collections::BTreeSet;
use std::future::ready;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use splai_e2e::model_server::{DIMENSION, ModelServer, vector_for};

use crate::{Fabric, JOB_LIMIT, eventually_within, ollama};

/// Worker settings for the double as the only (OpenAI-compatible) backend.
fn openai(double: &ModelServer) -> [(&'static str, &str); 2] {
    [
        ("SPLAI_WORKER_BACKENDS", "openai"),
        ("SPLAI_OPENAI_BASE_URL", double.url()),
    ]
}

/// A chat job on an Ollama-backed worker completes with the model's answer to the prompt.
#[tokio::test]
async fn chat_job_completes_with_the_ollama_answer() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-chat", &ollama(&double)).await;

    let prompt = "Summarise SPLAI in one line";
    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": prompt}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert_eq!(done["status"], "Completed", "{done}");
    let sent = double
        .last_body("/api/generate")
        .expect("the double was asked");
    assert_eq!(sent["prompt"], prompt);
    let out = fabric.api.output(&job, "generate").await;
    assert_eq!(out["text"], format!("double: {prompt}"), "{out}");
    assert_eq!(out["backend"], "ollama");
    assert_eq!(out["_splai"]["worker_id"], "w-chat");
    assert_eq!(out["_splai"]["attempt"], 1);
}

/// A batch analysis runs one OpenAI-compatible call per item; its aggregate merges every answer.
#[tokio::test]
async fn batch_analysis_fans_out_and_aggregates_every_answer() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-batch", &openai(&double)).await;

    let items = ["alpha", "beta", "gamma"];
    let job = fabric
        .api
        .submit(json!({"type": "batch_analysis", "input": items}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert_eq!(done["status"], "Completed", "{done}");
    let tasks = fabric.api.tasks(&job).await;
    let states: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap(),
                t["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("analyze-0", "Completed"),
            ("analyze-1", "Completed"),
            ("analyze-2", "Completed"),
            ("aggregate", "Completed"),
        ]
    );
    assert_eq!(double.requests("/v1/chat/completions"), 3);
    let report = fabric.api.output(&job, "aggregate").await;
    assert_eq!(report["source_count"], 3, "{report}");
    assert_eq!(
        report["provenance"]["text"],
        json!(["analyze-0", "analyze-1", "analyze-2"])
    );
    // The first answer is the merged value; the others differ from it, so they are kept as
    // conflicts: together they are every answer.
    let result = &report["result"];
    let mut answers = vec![result["merged_fields"]["text"].clone()];
    answers.extend(
        result["conflicts"]["text"]
            .as_array()
            .into_iter()
            .flatten()
            .cloned(),
    );
    let answers: BTreeSet<&str> = answers.iter().filter_map(Value::as_str).collect();
    let expected: BTreeSet<String> = items.iter().map(|i| format!("double: {i}")).collect();
    assert_eq!(
        answers,
        expected.iter().map(String::as_str).collect(),
        "{report}"
    );
}

/// An embedding job returns one vector per text, of the model's dimension and values.
#[tokio::test]
async fn embedding_job_returns_the_models_vectors() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-embed", &ollama(&double)).await;

    let texts = ["first text", "second text"];
    let job = fabric
        .api
        .submit(json!({"type": "embedding", "input": texts}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert_eq!(done["status"], "Completed", "{done}");
    let out = fabric.api.output(&job, "embed").await;
    assert_eq!(out["dimension"], DIMENSION, "{out}");
    assert_eq!(out["text_count"], texts.len());
    let vectors = out["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), texts.len());
    for (text, got) in texts.iter().zip(vectors) {
        let got: Vec<f64> = got
            .as_array()
            .expect("a vector")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect();
        let want = vector_for(text);
        assert_eq!(got.len(), want.len());
        let close = got
            .iter()
            .zip(&want)
            .all(|(g, w)| (g - f64::from(*w)).abs() < 1e-6);
        assert!(close, "{text}: got {got:?}, want {want:?}");
    }
    assert_eq!(double.requests("/api/embed"), 1);
}

/// A tool command past its `timeout_sec` is killed at once, failing its task and its job.
#[tokio::test]
async fn tool_past_its_timeout_is_killed_and_fails_the_job() {
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-tool", &[]).await;

    let started = Instant::now();
    // A duration no other process uses, so the test can find the command in /proc whatever
    // namespaces it runs in.
    let marker = crate::unique_sleep_seconds();
    let job = fabric
        .api
        .submit(json!({"type": "tool", "tasks": [{
            "task_id": "slow",
            "type": "tool_execution",
            "inputs": {"argv": ["sleep", marker], "timeout_sec": 1},
            "max_retries": 0,
        }]}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(done["status"], "Failed", "{done}");
    let task = fabric.api.task(&job, "slow").await;
    assert_eq!(task["status"], "Failed", "{task}");
    assert_eq!(task["attempt"], 1);
    assert!(
        task["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{task}"
    );
    eventually_within(Duration::from_secs(5), "the sleep exits", || {
        ready(crate::processes_running(&["sleep", &marker]).is_empty())
    })
    .await;
}

/// A model server's 500 is retried within the attempt, which then completes the task.
#[tokio::test]
async fn model_server_error_is_retried_within_the_attempt() {
    let double = ModelServer::start().await;
    double.fail_next("/api/generate", 500, r#"{"error":"runner crashed"}"#, 1);
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-retry", &ollama(&double)).await;

    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": "again"}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert_eq!(done["status"], "Completed", "{done}");
    assert_eq!(double.requests("/api/generate"), 2);
    let task = fabric.api.task(&job, "generate").await;
    assert_eq!(task["attempt"], 1, "{task}");
    let out = fabric.api.output(&job, "generate").await;
    assert_eq!(out["text"], "double: again");
}

/// A model server's 400 fails the task on its first attempt, with the server's message.
#[tokio::test]
async fn model_server_rejection_fails_the_task_without_retries() {
    let double = ModelServer::start().await;
    let refusal = r#"model "llama9" not found, try pulling it first"#;
    double.fail_next(
        "/api/generate",
        400,
        &json!({ "error": refusal }).to_string(),
        1,
    );
    let fabric = Fabric::start(&[]);
    let _worker = fabric.worker("w-reject", &ollama(&double)).await;

    let job = fabric
        .api
        .submit(json!({"type": "chat", "tasks": [{
            "task_id": "generate",
            "type": "llm_inference",
            "inputs": {"prompt": "hi"},
            "max_retries": 3,
        }]}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;

    assert_eq!(done["status"], "Failed", "{done}");
    let task = fabric.api.task(&job, "generate").await;
    assert_eq!(
        (&task["status"], &task["attempt"]),
        (&json!("Failed"), &json!(1)),
        "{task}"
    );
    assert!(
        task["error"].as_str().unwrap_or_default().contains(refusal),
        "{task}"
    );
    assert_eq!(double.requests("/api/generate"), 1);
}

/// With `SPLAI_WORKER_METRICS_ADDR` set, the worker serves Prometheus text on `/metrics`:
/// after one chat task, the running gauge is back to 0, the task is counted as completed, and
/// the model call is in the latency histogram under its backend.
#[tokio::test]
async fn worker_serves_its_metrics_after_a_task() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut env = ollama(&double).to_vec();
    env.push(("SPLAI_WORKER_METRICS_ADDR", &addr));
    let _worker = fabric.worker("w-metrics", &env).await;

    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": "count me"}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");

    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    let text = resp.text().await.expect("body");
    for line in [
        "# TYPE worker_tasks_running gauge",
        "# TYPE worker_tasks_finished_total counter",
        "# TYPE worker_executor_duration_seconds histogram",
        "# TYPE worker_model_errors_total counter",
        "worker_tasks_running 0",
        "worker_tasks_finished_total{task_type=\"llm_inference\",outcome=\"completed\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    let count = text
        .lines()
        .find(|l| l.starts_with("worker_executor_duration_seconds_count{backend=\"ollama\","))
        .unwrap_or_else(|| panic!("no ollama latency series in:\n{text}"));
    assert!(count.ends_with(" 1"), "{count}");
    assert!(
        text.lines().any(|l| l
            .starts_with("worker_executor_duration_seconds_bucket{backend=\"ollama\",")
            && l.contains("le=\"+Inf\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    assert!(!text.contains(&job), "job id in the worker's metrics");
}
