//! Scratch: claim path for callgrind.
use std::sync::Arc;
use std::time::Duration;
use splai_shared::clock::SystemClock;
use splai_shared::domain::*;
use splai_shared::engine::*;
use splai_shared::planner::{Planner, PlannerConfig};
use splai_shared::queue::sqlite::SqliteLeaseQueue;
use splai_shared::store::sqlite::{SqliteDb, SqliteStore};
use splai_shared::store::Dispatch;
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("p.db")).await.unwrap();
    let store = Arc::new(SqliteStore::new(db.clone(), Dispatch::Direct));
    let b = Backends { jobs: store.clone(), workers: store.clone(), outbox: store, queue: Arc::new(SqliteLeaseQueue::new(db)) };
    let planner = Planner::new(PlannerConfig { llm_endpoint: None, llm_api_key: None, llm_timeout: Duration::from_secs(1), max_tasks: 1000 });
    let engine = Engine::new(b, planner, Arc::new(SystemClock), EngineConfig::default());
    let w = WorkerId::parse("w1").unwrap();
    engine.register_worker(&w, &WorkerRegistration { backends: vec!["echo".into()], ..Default::default() }).await.unwrap();
    let job = || NewJob { job_type: "bench".into(), tasks: Some(vec![serde_json::from_value(json!({"task_id":"noop","type":"llm_inference","inputs":{"prompt":"noop"},"constraints":{"backend":"echo"}})).unwrap()]), ..Default::default() };
    engine.submit_many((0..n).map(|_| job()).collect()).await.unwrap();
    let phase = std::env::var("PHASE").unwrap_or_default();
    let mut got = Vec::new();
    if phase == "claim" || phase == "report" {
        loop { let g = engine.assign(&w, 256, Duration::ZERO).await.unwrap(); if g.is_empty() { break } got.extend(g); }
    }
    if phase == "report" {
        for c in got.chunks(256) {
            let reports: Vec<Report> = c.iter().map(|a| Report { task: TaskRef { job_id: a.job_id.clone(), task_id: a.task_id.clone() }, lease_id: a.lease_id.clone(), idempotency_key: format!("{}:Completed", a.lease_id), status: Status::Completed, output_artifact_uri: Some("artifact://x/y/z".into()), output_artifact: None, error: None, retryable: true }).collect();
            engine.report(&reports).await.unwrap();
        }
    }
}
