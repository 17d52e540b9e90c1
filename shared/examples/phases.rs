// Scratch: time the engine phases on SQLite (not committed).
use serde_json::json;
use splai_shared::clock::SystemClock;
use splai_shared::domain::*;
use splai_shared::engine::*;
use splai_shared::planner::{Planner, PlannerConfig};
use splai_shared::queue::sqlite::SqliteLeaseQueue;
use splai_shared::store::Dispatch;
use splai_shared::store::sqlite::{SqliteDb, SqliteStore};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("p.db")).await.unwrap();
    let store = Arc::new(SqliteStore::new(db.clone(), Dispatch::Direct));
    let b = Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store,
        queue: Arc::new(SqliteLeaseQueue::new(db)),
    };
    let planner = Planner::new(PlannerConfig {
        llm_endpoint: None,
        llm_api_key: None,
        llm_timeout: Duration::from_secs(1),
        max_tasks: 1000,
    });
    let engine = Engine::new(b, planner, Arc::new(SystemClock), EngineConfig::default());
    let w = WorkerId::parse("w1").unwrap();
    engine
        .register_worker(
            &w,
            &WorkerRegistration {
                backends: vec!["echo".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let n = 20_000;
    let job = || {
        NewJob { job_type: "bench".into(), tasks: Some(vec![serde_json::from_value(json!({"task_id":"noop","type":"llm_inference","inputs":{"prompt":"noop"},"constraints":{"backend":"echo"}})).unwrap()]), ..Default::default() }
    };
    let t = Instant::now();
    for _ in 0..(n / 1000) {
        engine
            .submit_many((0..1000).map(|_| job()).collect())
            .await
            .unwrap();
    }
    let sub = t.elapsed();
    let (mut claim_t, mut report_t) = (Duration::ZERO, Duration::ZERO);
    let mut done = 0;
    while done < n {
        let t = Instant::now();
        let got = engine.assign(&w, 256, Duration::ZERO).await.unwrap();
        claim_t += t.elapsed();
        let reports: Vec<Report> = got
            .iter()
            .map(|a| Report {
                task: TaskRef {
                    job_id: a.job_id.clone(),
                    task_id: a.task_id.clone(),
                },
                lease_id: a.lease_id.clone(),
                idempotency_key: format!("{}:Completed", a.lease_id),
                status: Status::Completed,
                output_artifact_uri: Some("artifact://x/y/z".into()),
                output_artifact: None,
                error: None,
                retryable: true,
            })
            .collect();
        let t = Instant::now();
        engine.report(&reports).await.unwrap();
        report_t += t.elapsed();
        done += got.len();
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "submit {:.1} us/task, claim+start {:.1} us/task, report {:.1} us/task; total {:.1}",
        per(sub),
        per(claim_t),
        per(report_t),
        per(sub + claim_t + report_t)
    );
}
