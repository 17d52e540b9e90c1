//! Worker integration tests: model backends and executors against the model-server double
//! (`splai_e2e::model_server`), over real HTTP on localhost.

mod executors;
mod model_download;
mod models;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use splai_e2e::model_server::ModelServer;
use splai_shared::artifacts::local::LocalArtifactStore;
use splai_shared::domain::{JobId, LeaseId, TaskId, TaskType, TenantId};
use splai_shared::engine::Assignment;
use splai_worker::config::{Config, Endpoint, ExecutorConfig, Secret, ToolNetwork};
use splai_worker::executor::Executors;
use splai_worker::models::{ModelBackends, OllamaBackend, OpenAiBackend};

/// The double as a model-server endpoint, with an optional API key.
pub fn endpoint(server: &ModelServer, key: Option<&str>) -> Endpoint {
    Endpoint {
        base_url: server.url().to_owned(),
        api_key: key.map(Secret::new),
    }
}

/// An Ollama backend on the double, with no default model, retrying `retries` times.
pub fn ollama(server: &ModelServer, retries: u32) -> OllamaBackend {
    OllamaBackend::new(
        reqwest::Client::new(),
        endpoint(server, None),
        None,
        retries,
    )
}

/// An OpenAI-compatible backend called `name` on the double, sending `key`.
pub fn openai(name: &str, server: &ModelServer, key: Option<&str>, retries: u32) -> OpenAiBackend {
    let e = endpoint(server, key);
    OpenAiBackend::new(name, reqwest::Client::new(), e, None, retries)
}

/// A URL nothing listens on: a port bound and released at once, so connecting is refused.
pub fn unreachable_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A first attempt of task `t1` of job `job-1` with `inputs` (a JSON object).
#[track_caller]
pub fn a_task(task_type: TaskType, inputs: Value) -> Assignment {
    let Value::Object(inputs) = inputs else {
        panic!("task inputs are a JSON object");
    };
    Assignment {
        job_id: JobId::parse("job-1").unwrap(),
        task_id: TaskId::parse("t1").unwrap(),
        lease_id: LeaseId::parse("lease-1").unwrap(),
        lease_expires: time::OffsetDateTime::now_utc(),
        attempt: 1,
        max_retries: 2,
        task_type,
        inputs,
        timeout_sec: 60,
        resources: Default::default(),
        constraints: Default::default(),
        tenant: TenantId::parse("default").unwrap(),
        priority: Default::default(),
        job_type: "chat".to_owned(),
        model: None,
        traceparent: None,
        output_upload: None,
    }
}

/// Executors over `models`, with artifacts, sandboxes and the model cache in a temporary
/// directory (kept alive by the returned guard) and `tune` applied to the configuration.
pub fn executors(
    models: ModelBackends,
    tune: impl FnOnce(&mut ExecutorConfig),
) -> (Executors, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_lookup(|_| None).unwrap().executors;
    config.sandbox_root = dir.path().join("sandboxes");
    config.model_cache_dir = dir.path().join("models");
    config.tool_network = ToolNetwork::Host;
    tune(&mut config);
    let ex = Executors {
        models,
        artifacts: Arc::new(LocalArtifactStore::new(dir.path().join("artifacts"))),
        config: Arc::new(config),
        http: reqwest::Client::new(),
        gateway: None,
    };
    (ex, dir)
}

/// Waits (bounded, 2 s) until `condition` holds.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}
