//! `POST /v1/tasks/{job}/{task}/chunks`: streamed task output accepted only from the task's
//! current lease, stored in order, and refused (nothing stored) otherwise.

use reqwest::StatusCode;
use serde_json::json;
use splai_shared::domain::{JobId, TaskId, TaskRef};

use crate::helpers::*;

/// The lease holder's chunks are stored once each (a repeated request adds nothing); a
/// stale lease, a finished task and an unknown job are refused.
#[tokio::test]
async fn chunks_are_accepted_from_the_current_lease_only() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(json!({ "type": "chat", "input": "hi" })).await;
    let a = app.claim("w1", 1).await.remove(0);
    let path = format!("/v1/tasks/{job}/generate/chunks");
    let send = |lease: &str, first: u32, chunks: &[&str]| json!({ "lease_id": lease, "first_seq": first, "chunks": chunks });
    let lease = a["lease_id"].as_str().unwrap();
    let (status, resp) = app.post(&path, &send(lease, 0, &["Hel", "lo"])).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let (status, _) = app.post(&path, &send(lease, 1, &["lo", "!"])).await;
    assert_eq!(status, StatusCode::OK);
    let task = TaskRef {
        job_id: JobId::parse(job.clone()).unwrap(),
        task_id: TaskId::parse("generate").unwrap(),
    };
    let stored = app.engine.chunks_after(&task, 0, 100).await.unwrap();
    let texts: Vec<&str> = stored.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["Hel", "lo", "!"]);

    let (status, resp) = app.post(&path, &send("lease-other", 3, &["x"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{resp}");
    assert_eq!(resp["error"]["code"], "conflict");
    app.report(&a, "Completed").await;
    let (status, _) = app.post(&path, &send(lease, 3, &["late"])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .post(
            "/v1/tasks/job-missing/generate/chunks",
            &send(lease, 0, &["x"]),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an unknown task has no current lease"
    );
    let (status, resp) = app.post(&path, &json!({ "chunks": ["no lease"] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert_eq!(
        app.engine.chunks_after(&task, 0, 100).await.unwrap().len(),
        3
    );
}
