//! The dead-letter admin API against the real server: listing, requeue reviving a job, dry run,
//! the batch, confirmation and rate-limit guards (the last shared by two servers on one SQLite
//! database), and the confirm token never echoed (scopes: `scope_matrix.rs`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const PATH: &str = "/v1/admin/queue/dead-letter";
const CONFIRM: &str = "confirm-s3cret-7f1e";

/// Submits a one-task job and fails its task on every attempt, leaving one dead letter.
async fn dead_letter(app: &TestApp) -> String {
    app.register("w1").await;
    let job = app.submit(dag(&[("bad", &[])])).await;
    for _ in 1..=3 {
        let a = app.claim("w1", 1).await.remove(0);
        app.report(&a, "Failed").await;
        app.clock.advance(Duration::from_secs(3));
    }
    assert_eq!(app.job(&job).await["status"], "Failed");
    job
}

fn body(n: usize, dry_run: bool) -> Value {
    let tasks: Vec<Value> = (0..n)
        .map(|i| json!({ "job_id": "job-none", "task_id": format!("t{i}") }))
        .collect();
    json!({ "tasks": tasks, "dry_run": dry_run })
}

/// POSTs with an optional `X-SPLAI-Confirm`; returns status and the raw body text.
async fn requeue(app: &TestApp, body: &Value, confirm: Option<&str>) -> (StatusCode, String) {
    let mut req = app.request(reqwest::Method::POST, PATH).json(body);
    if let Some(c) = confirm {
        req = req.header("X-SPLAI-Confirm", c);
    }
    let resp = req.send().await.expect("POST");
    (resp.status(), resp.text().await.expect("body"))
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON body")
}

/// The listing shows the dead letter; a requeue moves it back, revives the job, and a worker
/// can claim the task again; the audit log holds the list and the requeue.
#[tokio::test]
async fn requeue_revives_a_dead_letter() {
    let app = spawn_app().await;
    let job = dead_letter(&app).await;
    let (status, list) = app.get(&format!("{PATH}?limit=10")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let tasks = list["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{list}");
    assert_eq!(
        (tasks[0]["job_id"].as_str(), tasks[0]["task_id"].as_str()),
        (Some(job.as_str()), Some("bad"))
    );

    let req = json!({ "tasks": [{ "job_id": job, "task_id": "bad" }, { "job_id": job, "task_id": "ghost" }] });
    let (status, text) = requeue(&app, &req, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let resp = json_of(&text);
    assert_eq!(
        (resp["requested"].as_u64(), resp["requeued"].as_u64()),
        (Some(2), Some(1)),
        "{resp}"
    );
    assert_eq!(resp["dry_run"], false);

    assert!(app.engine.dead_letters(10).await.unwrap().is_empty());
    assert_ne!(app.job(&job).await["status"], "Failed");
    let again = app.claim("w1", 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["task_id"], "bad");

    let (_, audit) = app.get("/v1/admin/audit?action=deadletter_requeue").await;
    let ev = &audit["events"][0];
    assert_eq!(
        (ev["result"].as_str(), ev["requested"].as_u64()),
        (Some("ok"), Some(2)),
        "{audit}"
    );
    let (_, audit) = app.get("/v1/admin/audit?action=deadletter_list").await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
}

/// A dry run reports what would be requeued and changes nothing; a bad limit is a 400.
#[tokio::test]
async fn dry_run_changes_nothing() {
    let app = spawn_app().await;
    let job = dead_letter(&app).await;
    let req = json!({ "tasks": [{ "job_id": job, "task_id": "bad" }], "dry_run": true });
    let (status, text) = requeue(&app, &req, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let resp = json_of(&text);
    assert_eq!(
        (resp["requested"].as_u64(), resp["requeued"].as_u64()),
        (Some(1), Some(0)),
        "{resp}"
    );
    assert_eq!(resp["dry_run"], true);
    assert_eq!(resp["tasks"][0]["task_id"], "bad");
    assert_eq!(app.engine.dead_letters(10).await.unwrap().len(), 1);
    assert_eq!(app.job(&job).await["status"], "Failed");
    let (_, audit) = app.get("/v1/admin/audit?result=dry_run").await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 1, "{audit}");
    let (status, _) = app.get(&format!("{PATH}?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// More than MAX_BATCH tasks, or none, is a 400 naming the limit, audited as a refusal.
#[tokio::test]
async fn batch_over_the_maximum_is_refused() {
    let app = spawn_app_with(&[("SPLAI_ADMIN_REQUEUE_MAX_BATCH", "3")]).await;
    let (status, text) = requeue(&app, &body(4, false), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let msg = json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("requeue batch too large: 4 tasks requested, at most 3 allowed"),
        "{msg}"
    );
    assert!(msg.contains("SPLAI_ADMIN_REQUEUE_MAX_BATCH"), "{msg}");
    let (status, _) = requeue(&app, &body(0, false), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, text) = requeue(&app, &body(3, false), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, audit) = app.get("/v1/admin/audit?result=rejected").await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 2, "{audit}");
}

/// Above the threshold a confirm token is needed: missing 400, wrong 403, right 200; at the
/// threshold none is. The token appears in no response and no audit event.
#[tokio::test]
async fn large_requeue_needs_the_confirm_token() {
    let app = spawn_app_with(&[
        ("SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD", "2"),
        ("SPLAI_ADMIN_REQUEUE_CONFIRM_TOKEN", CONFIRM),
    ])
    .await;
    let mut texts = Vec::new();
    for (n, confirm, want, code) in [
        (2, None, StatusCode::OK, None),
        (
            3,
            None,
            StatusCode::BAD_REQUEST,
            Some("confirmation_required"),
        ),
        (3, Some("wrong"), StatusCode::FORBIDDEN, Some("forbidden")),
        (
            3,
            Some("confirm-s3cret-7f1"),
            StatusCode::FORBIDDEN,
            Some("forbidden"),
        ),
        (3, Some(CONFIRM), StatusCode::OK, None),
        (3, Some(CONFIRM), StatusCode::OK, None),
    ] {
        let dry = texts.len() == 5;
        let (status, text) = requeue(&app, &body(n, dry), confirm).await;
        assert_eq!(status, want, "{n} {confirm:?}: {text}");
        if let Some(code) = code {
            assert_eq!(json_of(&text)["error"]["code"], code, "{text}");
        }
        texts.push(text);
    }
    assert!(texts[1].contains("X-SPLAI-Confirm"), "{}", texts[1]);
    let (_, audit) = app.get("/v1/admin/audit?limit=100").await;
    texts.push(audit.to_string());
    let csv = app
        .request(reqwest::Method::GET, "/v1/admin/audit?format=csv")
        .send()
        .await
        .expect("csv");
    texts.push(csv.text().await.expect("csv body"));
    for t in &texts {
        assert!(!t.contains(CONFIRM), "token leaked: {t}");
    }
}

/// Two servers on one SQLite database share the rate limit: tasks requeued through one count
/// against the other, and the window slides after a minute.
#[tokio::test]
async fn rate_limit_is_shared_by_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let db = db.to_str().unwrap();
    let vars = [
        ("SPLAI_SQLITE_PATH", db),
        ("SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN", "1"),
    ];
    let a = spawn_app_with(&vars).await;
    let b = spawn_app_with(&vars).await;
    let job = dead_letter(&a).await;
    let one = json!({ "tasks": [{ "job_id": job, "task_id": "bad" }] });
    let (status, text) = requeue(&a, &one, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json_of(&text)["requeued"], 1, "{text}");

    // Instance b has requeued nothing itself, but the shared log says the minute is used up.
    let (status, text) = requeue(&b, &one, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let err = json_of(&text);
    assert_eq!(err["error"]["code"], "rate_limited", "{text}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN (1)"),
        "{text}"
    );
    // A dry run is checked against the same limit.
    let (status, _) = requeue(&b, &json!({ "tasks": one["tasks"], "dry_run": true }), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    // A minute later the window is free again (a's clock ran 9 s ahead making the dead
    // letter, so b moves past a's requeue plus a minute).
    b.clock.advance(Duration::from_secs(75));
    let (status, text) = requeue(&b, &one, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    b.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
}
