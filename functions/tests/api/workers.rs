//! Workers through the HTTP API: leases, heartbeats, duplicate and batched reports, long-poll.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A worker that stops heartbeating loses its lease; another worker finishes the task and the
/// first worker's late report changes nothing.
#[tokio::test]
async fn silent_worker_loses_its_lease_to_another() {
    let app = spawn_app().await;
    app.register("w1").await;
    app.register("w2").await;
    let job = app.submit(dag(&[("a", &[])])).await;
    let lost = app.claim("w1", 1).await.remove(0);
    assert!(app.claim("w2", 1).await.is_empty());

    app.expire_leases().await;
    let taken = app.claim("w2", 1).await.remove(0);
    assert_eq!(taken["attempt"], 2);
    assert_eq!(app.report(&lost, "Completed").await["outcome"], "stale");
    assert_eq!(
        app.report(&taken, "Completed").await["outcome"],
        "completed"
    );
    let task = &app.tasks(&job).await[0];
    assert_eq!(
        (task["status"].as_str(), task["worker_id"].as_str()),
        (Some("Completed"), Some("w2"))
    );
    let (_, metrics) = app.get("/v1/metrics").await;
    assert_eq!(metrics["counters"]["queue_expired_requeued_total"], 1);
}

/// Heartbeats renew leases so a long task survives past its first lease.
#[tokio::test]
async fn heartbeat_renews_the_lease() {
    let app = spawn_app().await;
    app.register("w1").await;
    app.submit(dag(&[("a", &[])])).await;
    let a = app.claim("w1", 1).await.remove(0);
    let hb = json!({ "leases": [{ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"] }] });
    for _ in 0..3 {
        app.clock.advance(LEASE - Duration::from_secs(3));
        let (_, reply) = app.post("/v1/workers/w1/heartbeat", &hb).await;
        assert_eq!(reply["renewed"].as_array().unwrap().len(), 1, "{reply}");
    }
    assert_eq!(app.report(&a, "Completed").await["outcome"], "completed");
}

/// A repeated report is accepted and changes nothing; a batch reports many tasks at once.
#[tokio::test]
async fn duplicate_and_batched_reports_are_idempotent() {
    let app = spawn_app().await;
    app.register("w1").await;
    for _ in 0..3 {
        app.submit(dag(&[("a", &[]), ("b", &["a"])])).await;
    }
    let got = app.claim("w1", 10).await;
    assert_eq!(got.len(), 3);
    let reports: Vec<_> = got
        .iter()
        .map(|a| json!({ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"], "status": "Completed" }))
        .collect();
    let (status, resp) = app
        .post("/v1/tasks/report", &json!({ "reports": reports }))
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert!(
        resp["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "completed")
    );
    let (_, again) = app
        .post("/v1/tasks/report", &json!({ "reports": reports }))
        .await;
    assert!(
        again["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "duplicate" && r["applied"] == false)
    );
    assert_eq!(
        app.claim("w1", 10).await.len(),
        3,
        "each b is released exactly once"
    );
}

/// A long-polling worker is woken by a submit instead of waiting out its poll.
#[tokio::test]
async fn long_poll_returns_as_soon_as_work_arrives() {
    let app = spawn_app().await;
    app.register("w1").await;
    let url = app.url("/v1/workers/w1/assignments?max_tasks=4&wait_seconds=20");
    let http = app.http.clone();
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.submit(dag(&[("a", &[])])).await;
    let got = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got["assignments"].as_array().unwrap().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Workers list with health; unknown workers get JSON 404s.
#[tokio::test]
async fn unknown_workers_are_not_found() {
    let app = spawn_app().await;
    app.register("w1").await;
    let (_, list) = app.get("/v1/workers").await;
    assert_eq!(list["workers"][0]["worker_id"], "w1");
    assert_eq!(list["workers"][0]["health"], "healthy");
    let (status, err) = app.get("/v1/workers/ghost/assignments").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error"]["code"], "not_found");
    let (status, _) = app.post("/v1/workers/ghost/heartbeat", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A worker shutting down hands its lease back: another worker can claim the task at once,
/// before any lease expiry, and the attempt is not counted.
#[tokio::test]
async fn handed_back_lease_is_claimable_at_once() {
    let app = spawn_app().await;
    app.register("w1").await;
    app.register("w2").await;
    app.submit(dag(&[("a", &[])])).await;
    let a = app.claim("w1", 1).await.remove(0);
    let held = json!({ "leases": [{ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"] }] });
    let (status, reply) = app.post("/v1/workers/w2/release", &held).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["stale"].as_array().unwrap().len(),
        1,
        "not w2's lease"
    );
    let (_, reply) = app.post("/v1/workers/w1/release", &held).await;
    assert_eq!(reply["released"][0]["task_id"], "a", "{reply}");
    let taken = app.claim("w2", 1).await.remove(0);
    assert_eq!(taken["attempt"], 1);
    assert_eq!(app.report(&a, "Completed").await["outcome"], "stale");
}

/// A report may carry the output's metadata; the task records it and the download uses its
/// media type.
#[tokio::test]
async fn report_records_output_artifact_metadata() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("a", &[])])).await;
    let a = app.claim("w1", 1).await.remove(0);
    let dir = app.dir.path().join("artifacts").join(&job).join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("output.json"), r#"{"text":"hi"}"#).unwrap();
    let uri = format!("artifact://{job}/a/output.json");
    let meta = json!({ "type": "local", "url": uri, "size_bytes": 13, "mime_type": "application/json", "expires_at": null });
    let mismatch = json!({ "job_id": a["job_id"], "task_id": "a", "lease_id": a["lease_id"], "status": "Completed",
        "output_artifact_uri": "artifact://x/y/z", "output_artifact": meta });
    let (status, _) = app.post("/v1/tasks/report", &mismatch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "url and uri must agree");
    let report = json!({ "job_id": a["job_id"], "task_id": "a", "lease_id": a["lease_id"], "status": "Completed",
        "output_artifact": meta });
    let (status, reply) = app.post("/v1/tasks/report", &report).await;
    assert_eq!(
        (status, &reply["outcome"]),
        (StatusCode::OK, &json!("completed"))
    );
    let task = &app.tasks(&job).await[0];
    assert_eq!(task["output_artifact_uri"], uri);
    assert_eq!(task["output_artifact"]["size_bytes"], 13);
    let resp = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/tasks/a/output")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"text":"hi"}"#);
}

/// A small output travels inline in the report: the task keeps it under its output URI (given
/// one when the worker sent none), dependents see that URI, the download serves it, and an
/// output over the inline limit is refused (it belongs in the artifact store).
#[tokio::test]
async fn inline_outputs_are_kept_on_the_task_and_served() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("a", &[]), ("b", &["a"])])).await;
    let a = app.claim("w1", 1).await.remove(0);
    let uri = format!("artifact://{job}/a/output.json");
    let report = |output: serde_json::Value| {
        json!({ "job_id": a["job_id"], "task_id": "a", "lease_id": a["lease_id"], "status": "Completed",
            "output_artifact_uri": uri, "output": output,
            "output_artifact": { "type": "inline", "url": uri, "size_bytes": 13, "mime_type": "application/json" } })
    };
    let (status, err) = app
        .post(
            "/v1/tasks/report",
            &report(json!({ "text": "x".repeat(2_000) })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SPLAI_MAX_INLINE_OUTPUT_BYTES")
    );
    // The bare form the README shows: no URI, no metadata.
    let bare = json!({ "job_id": a["job_id"], "task_id": "a", "lease_id": a["lease_id"],
        "status": "Completed", "output": { "text": "hi" } });
    let (status, _) = app.post("/v1/tasks/report", &bare).await;
    assert_eq!(status, StatusCode::OK);
    let tasks = app.tasks(&job).await;
    assert_eq!(tasks[0]["output"], json!({ "text": "hi" }));
    assert_eq!(tasks[0]["output_artifact_uri"], uri);
    assert_eq!(
        (
            &tasks[0]["output_artifact"]["type"],
            &tasks[0]["output_artifact"]["size_bytes"]
        ),
        (&json!("inline"), &json!(13))
    );
    assert_eq!(
        tasks[1]["inputs"]["dep:a:output_uri"], uri,
        "dependents see the URI"
    );
    let (status, out) = app.get(&format!("/v1/jobs/{job}/tasks/a/output")).await;
    assert_eq!((status, out), (StatusCode::OK, json!({ "text": "hi" })));
    let (_, reg) = app
        .post("/v1/workers/register", &json!({ "worker_id": "w2" }))
        .await;
    assert_eq!(
        reg["max_inline_output_bytes"], 1024,
        "workers learn the limit"
    );
}
