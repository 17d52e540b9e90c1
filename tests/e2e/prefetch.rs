//! Model prefetch end to end: `POST /v1/admin/models/prefetch` to one of two real workers puts
//! the model (from the Hugging Face double) in that worker's cache only; the worker reports
//! it in its inventory, and a later prefetch to every worker with `only_missing` skips it.

use serde_json::{Value, json};
use splai_e2e::model_server::{HF_FILES, ModelServer, hf_file};

use crate::{Fabric, JOB_LIMIT, eventually_within};

const MODEL: &str = "org/prefetched";

async fn prefetch(base: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/admin/models/prefetch"))
        .json(body)
        .send()
        .await
        .expect("prefetch");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("prefetch answer"))
}

/// The models `worker` registered with, as the gateway lists it.
async fn inventory(base: &str, worker: &str) -> Vec<String> {
    let list: Value = reqwest::get(format!("{base}/v1/workers"))
        .await
        .expect("workers")
        .json()
        .await
        .expect("workers JSON");
    list["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["worker_id"] == worker)
        .map(|w| serde_json::from_value(w["models"].clone()).expect("models"))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_prefetched_model_arrives_in_the_named_workers_cache() {
    let hf = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    let caches = tempfile::tempdir().expect("a temporary directory");
    let cache = |w: &str| caches.path().join(w);
    let mut workers = Vec::new();
    for id in ["w-near", "w-far"] {
        let dir = cache(id);
        let env = [
            ("SPLAI_WORKER_BACKENDS", "echo"),
            ("SPLAI_HF_ENDPOINT", hf.url()),
            ("SPLAI_MODEL_CACHE_DIR", dir.to_str().expect("a UTF-8 path")),
        ];
        workers.push(fabric.worker(id, &env).await);
    }
    let base = fabric.server.base.clone();

    let (status, resp) = prefetch(&base, &json!({ "model": MODEL, "workers": ["w-near"] })).await;
    assert_eq!(status, 202, "{resp}");
    let job = resp["job_id"].as_str().expect("job id").to_owned();
    let done = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");
    let out = fabric.api.output(&job, "w-near").await;
    assert_eq!(out["downloaded"], true, "{out}");
    assert_eq!(out["_splai"]["worker_id"], "w-near", "{out}");
    for f in HF_FILES {
        let got = std::fs::read(cache("w-near").join(MODEL).join(f)).expect("a cached file");
        assert_eq!(Some(got), hf_file(f), "{f}");
    }
    assert!(!cache("w-far").join(MODEL).exists(), "w-far was not named");
    eventually_within(JOB_LIMIT, "w-near lists the model", || {
        let base = base.clone();
        async move { inventory(&base, "w-near").await.contains(&MODEL.to_owned()) }
    })
    .await;

    let (status, resp) = prefetch(&base, &json!({ "model": MODEL, "only_missing": true })).await;
    assert_eq!(status, 202, "{resp}");
    let mut outcomes: Vec<(String, String)> = resp["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            (
                w["worker_id"].as_str().unwrap_or_default().to_owned(),
                w["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("w-far".to_owned(), "scheduled".to_owned()),
            ("w-near".to_owned(), "skipped".to_owned())
        ]
    );
    let job = resp["job_id"].as_str().expect("job id").to_owned();
    assert_eq!(
        fabric.api.finished(&job, JOB_LIMIT).await["status"],
        "Completed"
    );
    assert!(cache("w-far").join(MODEL).join("config.json").exists());
    drop(workers);
}
