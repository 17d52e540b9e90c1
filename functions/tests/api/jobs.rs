//! Jobs through the HTTP API: DAG order, retries, dead letters, idempotency, cancel, stream.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;

/// A three-task DAG runs to Completed in dependency order, outputs flowing to dependents.
#[tokio::test]
async fn three_task_dag_completes_in_dependency_order() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app
        .submit(dag(&[
            ("fetch", &[]),
            ("summarise", &["fetch"]),
            ("review", &["summarise"]),
        ]))
        .await;
    assert_eq!(app.job(&job).await["status"], "Queued");

    for (expected, dep) in [
        ("fetch", None),
        ("summarise", Some("fetch")),
        ("review", Some("summarise")),
    ] {
        let got = app.claim("w1", 10).await;
        assert_eq!(got.len(), 1, "only {expected} is ready: {got:?}");
        assert_eq!(got[0]["task_id"], expected);
        if let Some(dep) = dep {
            assert_eq!(
                got[0]["inputs"][format!("dep:{dep}:output_uri")],
                format!("artifact://{job}/{dep}/out.txt")
            );
        }
        assert_eq!(
            app.report(&got[0], "Completed").await["outcome"],
            "completed"
        );
    }
    let done = app.job(&job).await;
    assert_eq!(done["status"], "Completed");
    assert_eq!(
        done["result_artifact_uri"],
        format!("artifact://{job}/review/out.txt")
    );
    assert!(
        app.tasks(&job)
            .await
            .iter()
            .all(|t| t["status"] == "Completed")
    );
}

/// A task that fails once is retried after its backoff and then completes.
#[tokio::test]
async fn task_failing_once_is_retried_after_backoff() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("only", &[])])).await;
    let first = app.claim("w1", 1).await.remove(0);
    assert_eq!(app.report(&first, "Failed").await["outcome"], "retrying");
    let task = &app.tasks(&job).await[0];
    assert_eq!(
        (task["status"].as_str(), task["error"].as_str()),
        (Some("Queued"), Some("model server said no"))
    );
    assert!(app.claim("w1", 1).await.is_empty(), "still backing off");

    app.clock.advance(Duration::from_secs(3));
    let second = app.claim("w1", 1).await.remove(0);
    assert_eq!(second["attempt"], 2);
    app.report(&second, "Completed").await;
    assert_eq!(app.job(&job).await["status"], "Completed");
}

/// A task that always fails ends in the dead letters and fails its job; dependents cancel.
#[tokio::test]
async fn task_always_failing_is_dead_lettered_and_fails_the_job() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("bad", &[]), ("after", &["bad"])])).await;
    for attempt in 1..=3 {
        let a = app.claim("w1", 1).await.remove(0);
        assert_eq!(a["attempt"], attempt);
        app.report(&a, "Failed").await;
        app.clock.advance(Duration::from_secs(3));
    }
    let failed = app.job(&job).await;
    assert_eq!(failed["status"], "Failed");
    assert!(
        failed["message"].as_str().unwrap().contains("bad"),
        "{failed}"
    );
    let tasks = app.tasks(&job).await;
    assert_eq!(
        (tasks[0]["status"].as_str(), tasks[1]["status"].as_str()),
        (Some("Failed"), Some("Canceled"))
    );
    let dead = app.engine.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entry.task_id.as_str(), "bad");
    let (_, metrics) = app.get("/v1/metrics").await;
    assert_eq!(metrics["dead_letter_count"], 1);
}

/// A repeated submit with the same Idempotency-Key returns the first job; a different body
/// under the same key is a conflict.
#[tokio::test]
async fn idempotency_key_replays_the_first_submit() {
    let app = spawn_app().await;
    let send = |body: serde_json::Value| {
        app.http
            .post(app.url("/v1/jobs"))
            .header("Idempotency-Key", "order-42")
            .body(body.to_string())
            .send()
    };
    let first = send(json!({ "type": "chat", "input": "hi" }))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(json!({ "type": "chat", "input": "hi" }))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(
        again.json::<serde_json::Value>().await.unwrap()["job_id"],
        first["job_id"]
    );
    let other = send(json!({ "type": "chat", "input": "bye" }))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let (_, list) = app.get("/v1/jobs").await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

/// Cancel stops a queued job at once and reaches a running worker on its next heartbeat.
#[tokio::test]
async fn cancel_works_on_queued_and_running_jobs() {
    let app = spawn_app().await;
    app.register("w1").await;
    let queued = app.submit(dag(&[("a", &[])])).await;
    let (status, body) = app.delete(&format!("/v1/jobs/{queued}")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "accepted": true }))
    );
    assert_eq!(app.job(&queued).await["status"], "Canceled");
    assert!(app.claim("w1", 5).await.is_empty());

    let running = app.submit(dag(&[("a", &[]), ("b", &["a"])])).await;
    let a = app.claim("w1", 1).await.remove(0);
    app.delete(&format!("/v1/jobs/{running}")).await;
    let hb = json!({ "running_tasks": 1, "leases": [{ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"] }] });
    let (status, reply) = app.post("/v1/workers/w1/heartbeat", &hb).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["cancel"][0]["task_id"], "a", "{reply}");
    assert_eq!(app.report(&a, "Completed").await["outcome"], "stale");
    assert_eq!(app.job(&running).await["status"], "Canceled");
    let (status, _) = app.delete(&format!("/v1/jobs/{running}")).await;
    assert_eq!(status, StatusCode::OK, "a repeated cancel is accepted");
}

/// A failed job can be retried; a completed one cannot.
#[tokio::test]
async fn retry_reruns_a_failed_job() {
    let app = spawn_app().await;
    app.register("w1").await;
    let mut body = dag(&[("a", &[])]);
    body["tasks"][0]["max_retries"] = json!(0);
    let job = app.submit(body).await;
    let a = app.claim("w1", 1).await.remove(0);
    app.report(&a, "Failed").await;
    assert_eq!(app.job(&job).await["status"], "Failed");

    let (status, _) = app.post(&format!("/v1/jobs/{job}/retry"), &json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let again = app.claim("w1", 1).await.remove(0);
    app.report(&again, "Completed").await;
    assert_eq!(app.job(&job).await["status"], "Completed");
    let (status, err) = app.post(&format!("/v1/jobs/{job}/retry"), &json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
}

/// The SSE stream starts with a snapshot and ends with the terminal event.
#[tokio::test]
async fn stream_follows_a_job_to_completion() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("a", &[]), ("b", &["a"])])).await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(async move {
        let mut names = Vec::new();
        let mut body = resp.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        }
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                names.push(n.to_owned());
            }
        }
        names
    });
    for _ in 0..2 {
        let a = app.claim("w1", 1).await.remove(0);
        app.report(&a, "Completed").await;
    }
    let names = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(names.first().map(String::as_str), Some("job.snapshot"));
    assert!(names.contains(&"task.update".to_owned()), "{names:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("job.completed"),
        "{names:?}"
    );
}

/// Jobs list newest first with cursor pages and exact filters.
#[tokio::test]
async fn job_list_pages_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit(json!({ "type": if i == 1 { "embedding" } else { "chat" }, "input": "x" }))
                .await,
        );
    }
    let (_, p1) = app.get("/v1/jobs?limit=2").await;
    assert_eq!(p1["jobs"][0]["job_id"], ids[2]);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = app.get(&format!("/v1/jobs?limit=2&cursor={cursor}")).await;
    assert_eq!(p2["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(p2["jobs"][0]["job_id"], ids[0]);
    let (_, typed) = app.get("/v1/jobs?type=embedding").await;
    assert_eq!(typed["jobs"][0]["job_id"], ids[1]);
}

/// A completed task's local artifact is downloadable; a missing one is a JSON 404.
#[tokio::test]
async fn task_output_is_served_from_the_artifact_root() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("a", &[])])).await;
    let (status, err) = app.get(&format!("/v1/jobs/{job}/tasks/a/output")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no output yet")
    );

    let a = app.claim("w1", 1).await.remove(0);
    let dir = app.dir.path().join("artifacts").join(&job).join("a");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("out.txt"), "the answer").unwrap();
    app.report(&a, "Completed").await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/tasks/a/output")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "the answer");
}

/// Shutdown drains promptly even with an event stream open: the stream ends, the server stops.
#[tokio::test]
async fn shutdown_ends_open_streams_and_stops() {
    let app = spawn_app().await;
    let job = app.submit(dag(&[("a", &[])])).await;
    let resp = app
        .http
        .get(app.url(&format!("/v1/jobs/{job}/stream")))
        .send()
        .await
        .unwrap();
    let reader = tokio::spawn(async move { resp.text().await });
    tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("stops in time")
        .unwrap();
    let text = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(text.contains("event: job.snapshot"), "{text}");
}
