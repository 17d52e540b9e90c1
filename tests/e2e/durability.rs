//! Kill -9 the real `splai` process with tasks leased and queued, restart it on the same
//! database, and every job still completes.

use serde_json::{Value, json};
use splai_e2e::SplaiServer;

use crate::eventually;

/// Short leases so the restarted server requeues the killed server's leases quickly.
const FAST_LEASES: &[(&str, &str)] = &[
    ("SPLAI_LEASE_SECONDS", "2"),
    ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ("SPLAI_SWEEP_INTERVAL_MS", "100"),
];

async fn send(req: reqwest::RequestBuilder) -> Value {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    send(http.get(url)).await
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    send(http.post(url).json(&body)).await
}

/// A success report for an assignment.
fn completed(a: &Value) -> Value {
    json!({ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"], "status": "Completed" })
}

/// Jobs submitted, partly claimed and partly completed survive a SIGKILL: after a restart a
/// worker finishes every task of every job.
#[tokio::test]
async fn sigkill_with_tasks_leased_and_queued_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("splai.db");
    let http = reqwest::Client::new();
    let first = SplaiServer::start(&db, FAST_LEASES);
    let base = first.base.clone();
    post(
        &http,
        format!("{base}/v1/workers/register"),
        json!({ "worker_id": "w1" }),
    )
    .await;
    let mut jobs = Vec::new();
    for i in 0..20 {
        let tasks = json!([
            { "task_id": "a", "type": "llm_inference" },
            { "task_id": "b", "type": "llm_inference", "dependencies": ["a"] },
            { "task_id": "c", "type": "aggregation", "dependencies": ["a", "b"] },
        ]);
        let priority = ["interactive", "standard", "batch"][i % 3];
        let body = json!({ "type": "chat", "priority": priority, "tasks": tasks });
        let resp = post(&http, format!("{base}/v1/jobs"), body).await;
        jobs.push(resp["job_id"].as_str().unwrap().to_owned());
    }
    // Lease 10 tasks and complete 5 of them; the rest stay leased or queued at the kill.
    let got = get(
        &http,
        format!("{base}/v1/workers/w1/assignments?max_tasks=10"),
    )
    .await;
    let leased = got["assignments"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 10);
    for a in &leased[..5] {
        post(&http, format!("{base}/v1/tasks/report"), completed(a)).await;
    }
    first.kill();

    let second = SplaiServer::start(&db, FAST_LEASES);
    let base = second.base.clone();
    eventually(|| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let got = get(
                &http,
                format!("{base}/v1/workers/w1/assignments?max_tasks=50"),
            )
            .await;
            let batch: Vec<Value> = got["assignments"]
                .as_array()
                .unwrap()
                .iter()
                .map(completed)
                .collect();
            if !batch.is_empty() {
                post(
                    &http,
                    format!("{base}/v1/tasks/report"),
                    json!({ "reports": batch }),
                )
                .await;
            }
            let done = get(&http, format!("{base}/v1/jobs?status=Completed&limit=100")).await;
            done["jobs"].as_array().unwrap().len() == 20
        }
    })
    .await;
    for job in &jobs {
        let tasks = get(&http, format!("{base}/v1/jobs/{job}/tasks")).await;
        assert_eq!(tasks["total"], 3);
        let all_done = tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["status"] == "Completed");
        assert!(all_done, "{tasks}");
    }
    drop(second);
}
