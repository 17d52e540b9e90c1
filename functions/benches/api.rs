//! API benchmark on the embedded default (SQLite file, queue in the same database).
//!
//! Measures, over several rounds, the median of:
//! - submits/s: concurrent clients posting one-task jobs to `POST /v1/jobs`;
//! - claim+report round trips/s: workers claiming batches from the assignment endpoint and
//!   reporting them in one batched `POST /v1/tasks/report`; each task makes two state changes
//!   (Queued→Running, Running→Completed);
//! - the same claim+report loop calling the engine directly, to show what HTTP costs.
//!
//! Run: `cargo bench -p splai-functions --bench api`. Knobs: `BENCH_JOBS` (10000),
//! `BENCH_BATCH` (100), `BENCH_WORKERS` (4), `BENCH_CLIENTS` (16), `BENCH_ROUNDS` (5),
//! `BENCH_TASKS_PER_JOB` (1: every task change also changes its job; more independent tasks
//! per job amortise the job row).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use splai_functions::config::Config;
use splai_functions::server;
use splai_shared::clock::SystemClock;
use splai_shared::domain::{Status, TaskRef, WorkerId, WorkerRegistration};
use splai_shared::engine::{Engine, Report};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Knobs {
    jobs: usize,
    batch: usize,
    workers: usize,
    clients: usize,
    rounds: usize,
    tasks_per_job: usize,
}

async fn start(dir: &std::path::Path) -> (String, Arc<Engine>, tokio::sync::oneshot::Sender<()>) {
    let mut config = Config::from_lookup(|_| None).expect("config");
    config.backends.sqlite_path = dir.join("bench.db");
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.engine.lease = Duration::from_secs(60);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = server::start(config, Arc::new(SystemClock), async {
        let _ = stopped.await;
    })
    .await
    .expect("server");
    (format!("http://{}", running.addr), running.engine, stop)
}

fn job_body(tasks: usize) -> String {
    let tasks: Vec<Value> = (0..tasks)
        .map(|i| json!({ "task_id": format!("t{i}"), "type": "llm_inference" }))
        .collect();
    json!({ "type": "chat", "input": "benchmark prompt", "tasks": tasks }).to_string()
}

/// Submits `total` jobs; returns jobs per second.
async fn submits(
    base: &str,
    http: &reqwest::Client,
    total: usize,
    clients: usize,
    tasks: usize,
) -> f64 {
    let started = Instant::now();
    let per = total / clients;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (http, url) = (http.clone(), format!("{base}/v1/jobs"));
        handles.push(tokio::spawn(async move {
            for _ in 0..per {
                let resp = http
                    .post(&url)
                    .body(job_body(tasks))
                    .send()
                    .await
                    .expect("submit");
                assert_eq!(resp.status(), 202);
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    (per * clients) as f64 / started.elapsed().as_secs_f64()
}

async fn http_round_trips(base: &str, http: &reqwest::Client, k: &Knobs) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..k.workers {
        let (http, base, batch) = (http.clone(), base.to_owned(), k.batch);
        handles.push(tokio::spawn(async move {
            let id = format!("bench-{w}");
            http.post(format!("{base}/v1/workers/register")).body(json!({ "worker_id": id }).to_string()).send().await.expect("register");
            let mut done = 0;
            loop {
                let url = format!("{base}/v1/workers/{id}/assignments?max_tasks={batch}");
                let got: Value = http.get(url).send().await.expect("claim").json().await.expect("json");
                let list = got["assignments"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    return done;
                }
                let reports: Vec<Value> = list
                    .iter()
                    .map(|a| json!({ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"], "status": "Completed", "output_artifact_uri": "artifact://x/y/z" }))
                    .collect();
                let resp = http.post(format!("{base}/v1/tasks/report")).body(json!({ "reports": reports }).to_string()).send().await.expect("report");
                assert_eq!(resp.status(), 200);
                done += list.len();
            }
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.expect("worker");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

async fn engine_round_trips(engine: &Arc<Engine>, k: &Knobs) -> f64 {
    let started = Instant::now();
    let mut handles = Vec::new();
    for w in 0..k.workers {
        let (engine, batch) = (engine.clone(), k.batch);
        handles.push(tokio::spawn(async move {
            let id = WorkerId::parse(format!("direct-{w}")).expect("id");
            engine
                .register_worker(&id, &WorkerRegistration::default())
                .await
                .expect("register");
            let mut done = 0;
            loop {
                let got = engine
                    .assign(&id, batch, Duration::ZERO)
                    .await
                    .expect("assign");
                if got.is_empty() {
                    return done;
                }
                let reports: Vec<Report> = got
                    .iter()
                    .map(|a| Report {
                        task: TaskRef {
                            job_id: a.job_id.clone(),
                            task_id: a.task_id.clone(),
                        },
                        lease_id: a.lease_id.clone(),
                        idempotency_key: a.lease_id.to_string(),
                        status: Status::Completed,
                        output_artifact_uri: Some("artifact://x/y/z".into()),
                        output_artifact: None,
                        output: None,
                        error: None,
                        retryable: true,
                    })
                    .collect();
                engine.report(&reports).await.expect("report");
                done += got.len();
            }
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await.expect("worker");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let k = Knobs {
        jobs: knob("BENCH_JOBS", 10_000),
        batch: knob("BENCH_BATCH", 100),
        workers: knob("BENCH_WORKERS", 4),
        clients: knob("BENCH_CLIENTS", 16),
        rounds: knob("BENCH_ROUNDS", 5),
        tasks_per_job: knob("BENCH_TASKS_PER_JOB", 1),
    };
    // Keep the number of tasks per round the same whatever the shape.
    let jobs = (k.jobs / k.tasks_per_job).max(k.clients);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (base, engine, _stop) = start(dir.path()).await;
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        let (mut sub, mut rt_http, mut rt_engine) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=k.rounds {
            let s = submits(&base, &http, jobs, k.clients, k.tasks_per_job).await;
            let h = http_round_trips(&base, &http, &k).await;
            submits(&base, &http, jobs, k.clients, k.tasks_per_job).await;
            let e = engine_round_trips(&engine, &k).await;
            println!("round {round}: submits/s {s:.0}  http claim+report tasks/s {h:.0}  engine claim+report tasks/s {e:.0}");
            sub.push(s);
            rt_http.push(h);
            rt_engine.push(e);
        }
        let (s, h, e) = (median(sub), median(rt_http), median(rt_engine));
        println!(
            "\nmedian over {} rounds ({jobs} jobs of {} task(s), batch {}, {} workers, {} clients):",
            k.rounds, k.tasks_per_job, k.batch, k.workers, k.clients
        );
        println!("  submits/s (jobs)                   {s:>9.0}");
        println!("  claim+report tasks/s (HTTP)        {h:>9.0}   ({:.0} task state changes/s)", 2.0 * h);
        println!("  claim+report tasks/s (engine)      {e:>9.0}   ({:.0} task state changes/s)", 2.0 * e);
        println!("  HTTP / engine                      {:>9.2}", h / e);
    });
}
