//! Bulk submit over HTTP: one request, one result per job.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{dag, spawn_app};

/// Every job of a bulk submit is answered on its own, in order: valid jobs are accepted and
/// runnable, a bad one is rejected with the error a single submit gets, a repeated key replays.
#[tokio::test]
async fn bulk_submit_answers_each_job_on_its_own() {
    let app = spawn_app().await;
    app.register("w1").await;
    let mut keyed = dag(&[("a", &[])]);
    keyed["idempotency_key"] = json!("order-7");
    let body = json!({ "jobs": [
        dag(&[("a", &[])]),
        { "type": "chat", "tasks": [{ "task_id": "x", "type": "llm_inference", "dependencies": ["x"] }] },
        { "input": "no type" },
        keyed.clone(),
        keyed,
        dag(&[("a", &[]), ("b", &["a"])]),
    ]});
    let (status, resp) = app.post("/v1/jobs/batch", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        (&resp["accepted"], &resp["replayed"], &resp["rejected"]),
        (&json!(3), &json!(1), &json!(2))
    );
    let r = resp["results"].as_array().unwrap();
    let statuses: Vec<&str> = r.iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "accepted", "rejected", "rejected", "accepted", "replayed", "accepted"
        ]
    );
    assert_eq!(r[4]["job_id"], r[3]["job_id"]);
    let msg = r[1]["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("jobs[1]: ") && msg.contains("depends on itself"),
        "{msg}"
    );
    assert_eq!(r[2]["error"]["code"], "invalid_request");
    assert!(
        r[2]["error"]["message"].as_str().unwrap().contains("type"),
        "{r:?}"
    );
    let claimed = app.claim("w1", 10).await;
    assert_eq!(claimed.len(), 3, "one ready task per accepted job");
}

/// A bulk submit that cannot be read at all, is too large, or carries a request-wide key is
/// refused whole, and writes nothing.
#[tokio::test]
async fn malformed_bulk_submits_are_refused_whole() {
    let app = spawn_app().await;
    let (status, _) = app.post("/v1/jobs/batch", &json!({ "job": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .post("/v1/jobs/batch", &json!([dag(&[("a", &[])])]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = app
        .http
        .post(app.url("/v1/jobs/batch"))
        .header("Idempotency-Key", "k")
        .body(json!({ "jobs": [dag(&[("a", &[])])] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (_, jobs) = app.get("/v1/jobs").await;
    assert!(jobs["jobs"].as_array().unwrap().is_empty());
}
