//! Model routing (`SPLAI_MODEL_ROUTING_FILE`) through the HTTP API: the routed backend and
//! model land on the inference task and only a worker offering both claims it.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

const ROUTING: &str = "\
default_backend: ollama
default_model: llama3-8b-q4
rules:
  - name: reasoning-gpu
    latency_class: interactive
    reasoning_required: true
    use_backend: vllm
    use_model: llama3-70b
";

async fn register(app: &TestApp, worker: &str, backend: &str, model: &str) {
    let body = json!({ "worker_id": worker, "cpu": 2, "backends": [backend], "models": [model] });
    let (status, resp) = app.post("/v1/workers/register", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

/// A job matching a rule gets the rule's backend and model as hard constraints: a worker with
/// the default backend and model is passed over, the one offering the routed pair claims it.
#[tokio::test]
async fn routed_inference_task_is_claimed_only_by_a_matching_worker() {
    let files = tempfile::tempdir().expect("temp dir");
    let path = files.path().join("routing.yaml");
    std::fs::write(&path, ROUTING).expect("write routing file");
    let app = spawn_app_with(&[("SPLAI_MODEL_ROUTING_FILE", path.to_str().expect("utf-8"))]).await;
    register(&app, "small", "ollama", "llama3-8b-q4").await;
    register(&app, "big", "vllm", "llama3-70b").await;

    let routed = app
        .submit(json!({
            "type": "chat", "input": "think hard",
            "latency_class": "interactive", "reasoning_required": true,
        }))
        .await;
    let defaulted = app.submit(json!({ "type": "chat", "input": "hi" })).await;

    let task = &app.tasks(&routed).await[0];
    assert_eq!(task["constraints"]["backend"], "vllm", "{task}");
    assert_eq!(task["constraints"]["model"], "llama3-70b", "{task}");
    let task = &app.tasks(&defaulted).await[0];
    assert_eq!(task["constraints"]["backend"], "ollama", "{task}");
    assert_eq!(task["constraints"]["model"], "llama3-8b-q4", "{task}");

    let small = app.claim("small", 10).await;
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(small[0]["job_id"], defaulted.as_str());
    let big = app.claim("big", 10).await;
    assert_eq!(big.len(), 1, "{big:?}");
    assert_eq!(big[0]["job_id"], routed.as_str());
}

/// The request's model beats the routing defaults; a task's own constraints beat routing.
#[tokio::test]
async fn explicit_model_and_task_constraints_win_over_routing() {
    let files = tempfile::tempdir().expect("temp dir");
    let path = files.path().join("routing.yaml");
    std::fs::write(&path, ROUTING).expect("write routing file");
    let app = spawn_app_with(&[("SPLAI_MODEL_ROUTING_FILE", path.to_str().expect("utf-8"))]).await;

    let job = app
        .submit(json!({ "type": "chat", "input": "hi", "model": "mistral" }))
        .await;
    let task = &app.tasks(&job).await[0];
    assert_eq!(task["constraints"]["backend"], "ollama", "{task}");
    assert_eq!(task["constraints"]["model"], "mistral", "{task}");

    let own = json!({ "type": "chat", "input": "hi", "tasks": [{
        "task_id": "a", "type": "llm_inference", "inputs": { "prompt": "hi" },
        "constraints": { "backend": "openai", "model": "gpt-x" },
    }]});
    let job = app.submit(own).await;
    let task = &app.tasks(&job).await[0];
    assert_eq!(task["constraints"]["backend"], "openai", "{task}");
    assert_eq!(task["constraints"]["model"], "gpt-x", "{task}");
}

/// Without a routing file nothing is added to a task's constraints.
#[tokio::test]
async fn without_a_routing_file_tasks_carry_no_route() {
    let app = spawn_app().await;
    let job = app.submit(json!({ "type": "chat", "input": "hi" })).await;
    let task = &app.tasks(&job).await[0];
    assert!(task["constraints"].get("backend").is_none(), "{task}");
    assert!(task["constraints"].get("model").is_none(), "{task}");
}
