//! A real server on an ephemeral port over a real SQLite file, on a clock the test moves.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use splai_functions::config::Config;
use splai_functions::server;
use splai_shared::clock::ManualClock;
use splai_shared::engine::Engine;

/// Lease length the test server runs with.
pub const LEASE: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub engine: Arc<Engine>,
    pub dir: tempfile::TempDir,
    /// Sent as `Authorization: Bearer` by every helper call when set.
    pub token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// A test server with these extra `SPLAI_*` variables (auth, for instance).
pub async fn spawn_app_with(vars: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| (*v).to_owned())
    })
    .expect("config");
    // A test may name the database (two servers sharing one); otherwise a fresh one.
    if !vars.iter().any(|(k, _)| *k == "SPLAI_SQLITE_PATH") {
        config.backends.sqlite_path = dir.path().join("splai.db");
    }
    config.artifact_root = dir.path().join("artifacts");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.engine.lease = LEASE;
    // A test may ask for immediate retries (`SPLAI_RETRY_BASE_MS=0`) to know when they start.
    if !vars.iter().any(|(k, _)| *k == "SPLAI_RETRY_BASE_MS") {
        config.engine.retry_base = Duration::from_secs(1);
    }
    config.engine.retry_max = Duration::from_secs(2);
    config.engine.task_defaults.max_retries = 2;
    config.engine.poll_interval = Duration::from_millis(20);
    config.sweep_interval = Duration::from_millis(20);
    config.max_body_bytes = 64 * 1024;
    config.max_inline_output_bytes = 1024;
    config.planner.max_tasks = 50;
    let clock = Arc::new(ManualClock::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = server::start(config, clock.clone(), async {
        let _ = stopped.await;
    })
    .await
    .expect("server starts");
    TestApp {
        base: format!("http://{}", running.addr),
        http: reqwest::Client::new(),
        clock,
        engine: running.engine,
        dir,
        token: None,
        stop: Some(stop),
        handle: Some(running.handle),
    }
}

impl TestApp {
    /// Signals shutdown (as Ctrl-C would) and waits for the server to stop.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().expect("server handle");
        handle.await.expect("server task")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `path`, with the app's token if it has one.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let resp = self
            .request(reqwest::Method::POST, path)
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .request(reqwest::Method::DELETE, path)
            .send()
            .await
            .expect("DELETE");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Submits and returns the job id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, resp) = self.post("/v1/jobs", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
        resp["job_id"].as_str().expect("job_id").to_owned()
    }

    pub async fn register(&self, worker: &str) {
        let body = json!({ "worker_id": worker, "cpu": 2, "backends": ["echo"] });
        let (status, resp) = self.post("/v1/workers/register", &body).await;
        assert_eq!(status, StatusCode::OK, "{resp}");
    }

    pub async fn claim(&self, worker: &str, max: u32) -> Vec<Value> {
        let (status, resp) = self
            .get(&format!("/v1/workers/{worker}/assignments?max_tasks={max}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        resp["assignments"].as_array().expect("assignments").clone()
    }

    pub async fn report(&self, a: &Value, status: &str) -> Value {
        let body = json!({
            "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"],
            "idempotency_key": format!("{}-{status}", a["lease_id"].as_str().unwrap_or_default()),
            "status": status,
            "output_artifact_uri": format!("artifact://{}/{}/out.txt", a["job_id"].as_str().unwrap_or_default(), a["task_id"].as_str().unwrap_or_default()),
            "error": if status == "Failed" { json!("model server said no") } else { Value::Null },
        });
        let (code, resp) = self.post("/v1/tasks/report", &body).await;
        assert_eq!(code, StatusCode::OK, "{resp}");
        resp
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    pub async fn tasks(&self, id: &str) -> Vec<Value> {
        let (status, resp) = self.get(&format!("/v1/jobs/{id}/tasks")).await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        resp["tasks"].as_array().expect("tasks").clone()
    }

    /// Moves the server's clock past the lease and waits until the sweeper has acted.
    pub async fn expire_leases(&self) {
        let expired = || {
            let c = self.engine.metrics().totals();
            c["queue_expired_requeued_total"] + c["dead_letter_total"]
        };
        let before = expired();
        self.clock.advance(LEASE + Duration::from_secs(1));
        eventually(|| async { expired() > before }).await;
    }
}

/// Waits (bounded) for a condition that background work will make true.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 5 s");
}

/// A job body with an explicit DAG.
pub fn dag(tasks: &[(&str, &[&str])]) -> Value {
    let tasks: Vec<Value> = tasks
        .iter()
        .map(|(id, deps)| json!({ "task_id": id, "type": "llm_inference", "inputs": { "prompt": id }, "dependencies": deps }))
        .collect();
    json!({ "type": "chat", "input": "hi", "tasks": tasks })
}
