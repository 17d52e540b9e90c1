//! End-to-end tests against real `splai` processes.

mod auth;
mod cli;
mod durability;
mod lambda;
mod localstack;
mod openai;
mod openapi;
mod postgres_faults;
mod prefetch;
mod redis_faults;
mod s3_artifacts;
mod sqs;
mod tracing;
mod worker_jobs;
mod worker_lifecycle;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use splai_e2e::SplaiServer;
use splai_e2e::model_server::ModelServer;
use splai_e2e::worker::SplaiWorker;

/// Longest wait for a job that should finish at once; a passing test never waits it out.
pub const JOB_LIMIT: Duration = Duration::from_secs(30);

/// Worker settings making the model-server double the worker's only (Ollama) backend.
pub fn ollama(double: &ModelServer) -> [(&'static str, &str); 2] {
    [
        ("SPLAI_WORKER_BACKENDS", "ollama"),
        ("SPLAI_OLLAMA_BASE_URL", double.url()),
    ]
}

/// A `sleep` duration (about 30 s) no other process is likely to use, to find a test's own
/// command in `/proc`.
pub fn unique_sleep_seconds() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("29.{nanos:09}")
}

/// Pids of live processes whose command line is exactly `argv`.
pub fn processes_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// Waits (bounded) for a condition that the server will make true.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}

/// Waits up to `limit` for `check` to hold, polling every 10 ms; panics naming `what`.
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within {limit:?}");
}

/// The gateway's HTTP API as a client sees it.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client of the gateway at `base`.
    pub fn new(base: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: base.to_owned(),
        }
    }

    /// A client of the gateway at `base` sending `token` as a Bearer token.
    pub fn with_token(base: &str, token: &str) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {token}").parse().expect("a header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        Api {
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .expect("an HTTP client"),
            base: base.to_owned(),
        }
    }

    async fn send(req: reqwest::RequestBuilder) -> Value {
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let body = resp.text().await.expect("body");
        assert!(status.is_success(), "{status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    /// `POST /v1/jobs`; the new job's id.
    pub async fn submit(&self, job: Value) -> String {
        let resp = Self::send(self.http.post(format!("{}/v1/jobs", self.base)).json(&job)).await;
        resp["job_id"].as_str().expect("a job id").to_owned()
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn job(&self, job: &str) -> Value {
        Self::send(self.http.get(format!("{}/v1/jobs/{job}", self.base))).await
    }

    /// Every task of a job, in planning order.
    pub async fn tasks(&self, job: &str) -> Vec<Value> {
        let list = Self::send(self.http.get(format!("{}/v1/jobs/{job}/tasks", self.base))).await;
        list["tasks"].as_array().expect("a task list").clone()
    }

    /// One task of a job.
    pub async fn task(&self, job: &str, task: &str) -> Value {
        let tasks = self.tasks(job).await;
        tasks
            .into_iter()
            .find(|t| t["task_id"] == task)
            .unwrap_or_else(|| panic!("job {job} has no task {task}"))
    }

    /// A completed task's output, downloaded through the gateway.
    pub async fn output(&self, job: &str, task: &str) -> Value {
        let url = format!("{}/v1/jobs/{job}/tasks/{task}/output", self.base);
        Self::send(self.http.get(url)).await
    }

    /// `DELETE /v1/jobs/{id}`.
    pub async fn cancel(&self, job: &str) {
        Self::send(self.http.delete(format!("{}/v1/jobs/{job}", self.base))).await;
    }

    /// Waits up to `limit` for the job to reach a terminal status; returns the job.
    pub async fn finished(&self, job: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let view = self.job(job).await;
            if matches!(
                view["status"].as_str(),
                Some("Completed" | "Failed" | "Canceled")
            ) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job} not finished within {limit:?}: {view}\ntasks: {:#?}",
                self.tasks(job).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One test's installation: a temporary directory holding the database and the artifact root,
/// and a `splai serve` on it; workers started through it share the artifact root.
pub struct Fabric {
    /// The gateway.
    pub server: SplaiServer,
    /// A client of it.
    pub api: Api,
    /// Where outputs (and tool sandboxes) live.
    pub artifacts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fabric {
    /// Starts a server with extra environment on a fresh database and artifact root.
    pub fn start(server_env: &[(&str, &str)]) -> Fabric {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let artifacts = dir.path().join("artifacts");
        let root = artifacts.to_str().expect("a UTF-8 temporary path");
        let mut env = vec![("SPLAI_ARTIFACT_ROOT", root)];
        env.extend_from_slice(server_env);
        let server = SplaiServer::start(&dir.path().join("splai.db"), &env);
        Fabric {
            api: Api::new(&server.base),
            server,
            artifacts,
            _dir: dir,
        }
    }

    /// Starts a worker called `id` on this installation's artifact root, with extra
    /// environment; returns once it registered.
    pub async fn worker(&self, id: &str, env: &[(&str, &str)]) -> SplaiWorker {
        let root = self.artifacts.to_str().expect("a UTF-8 temporary path");
        let mut all = vec![("SPLAI_ARTIFACT_ROOT", root)];
        all.extend_from_slice(env);
        SplaiWorker::start(&self.server.base, id, &all).await
    }
}

/// `n` one-task no-op jobs for the echo backend, as a bulk submit body.
fn noop_jobs(n: usize) -> Value {
    let job = json!({
        "type": "fault",
        "tasks": [{ "task_id": "noop", "type": "llm_inference",
                    "inputs": { "prompt": "noop" }, "constraints": { "backend": "echo" } }],
    });
    json!({ "jobs": vec![job; n] })
}

/// Submits `n` no-op jobs in one bulk request; their ids.
pub async fn submit_batch(base: &str, n: usize) -> Vec<String> {
    let resp: Value = reqwest::Client::new()
        .post(format!("{base}/v1/jobs/batch"))
        .json(&noop_jobs(n))
        .send()
        .await
        .expect("bulk submit")
        .json()
        .await
        .expect("bulk submit answer");
    assert_eq!(resp["rejected"], 0, "{resp}");
    resp["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["job_id"].as_str().expect("a job id").to_owned())
        .collect()
}

/// Waits up to a minute for every job to complete, then checks by the metrics that each
/// completed once and nothing was dead-lettered.
pub async fn all_complete_nothing_dead(fabric: &Fabric, jobs: &[String]) {
    eventually_within(Duration::from_secs(60), "every job completes", || {
        let (api, jobs) = (fabric.api.clone(), jobs.to_vec());
        async move {
            for job in &jobs {
                if api.job(job).await["status"] != "Completed" {
                    return false;
                }
            }
            true
        }
    })
    .await;
    let metrics: Value = reqwest::get(format!("{}/v1/metrics", fabric.server.base))
        .await
        .expect("metrics")
        .json()
        .await
        .expect("metrics JSON");
    assert_eq!(
        metrics["counters"]["jobs_completed_total"],
        json!(jobs.len()),
        "{metrics}"
    );
    assert_eq!(metrics["dead_letter_count"], json!(0), "{metrics}");
}
