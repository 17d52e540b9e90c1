//! Bad input gets a JSON error with the right status that names the problem, and changes
//! nothing in the database.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

struct Case {
    method: Method,
    path: &'static str,
    body: Option<String>,
    status: StatusCode,
    mentions: &'static str,
}

fn case(
    method: Method,
    path: &'static str,
    body: Option<String>,
    status: u16,
    mentions: &'static str,
) -> Case {
    Case {
        method,
        path,
        body,
        status: StatusCode::from_u16(status).unwrap(),
        mentions,
    }
}

fn post_job(body: Value) -> Option<String> {
    Some(body.to_string())
}

fn cases() -> Vec<Case> {
    let many: Vec<Value> = (0..51)
        .map(|i| json!({ "task_id": format!("t{i}"), "type": "embedding" }))
        .collect();
    vec![
        case(
            Method::POST,
            "/v1/jobs",
            Some("{not json".into()),
            400,
            "malformed JSON",
        ),
        case(Method::POST, "/v1/jobs", Some(String::new()), 400, "empty"),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "input": "x" })),
            400,
            "type",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "" })),
            400,
            "`type`",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "priority": "urgent" })),
            400,
            "priority",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "planner_mode": "magic" })),
            400,
            "planner_mode",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "reasoning_required": "yes" })),
            400,
            "reasoning_required",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "webhook_url": "ftp://x" })),
            400,
            "webhook_url",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "tasks": [{ "task_id": "a", "type": "teleport" }] })),
            400,
            "tasks[0].type",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(
                json!({ "type": "chat", "tasks": [{ "task_id": "a b", "type": "embedding" }] }),
            ),
            400,
            "task_id",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "tasks": [] })),
            400,
            "at least one task",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(dag(&[("a", &["b"]), ("b", &["a"])])),
            400,
            "cycle",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(dag(&[("a", &["ghost"])])),
            400,
            "ghost",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(dag(&[("a", &[]), ("a", &[])])),
            400,
            "duplicate task id",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            post_job(json!({ "type": "chat", "tasks": many })),
            400,
            "limit",
        ),
        case(
            Method::POST,
            "/v1/jobs",
            Some(format!(
                "{{\"type\":\"chat\",\"input\":\"{}\"}}",
                "x".repeat(70_000)
            )),
            413,
            "too large",
        ),
        case(Method::GET, "/v1/jobs/job-nope", None, 404, "not found"),
        case(Method::DELETE, "/v1/jobs/job-nope", None, 404, "not found"),
        case(
            Method::GET,
            "/v1/jobs/job-nope/tasks",
            None,
            404,
            "not found",
        ),
        case(Method::GET, "/v1/jobs?limit=abc", None, 400, "limit"),
        case(Method::GET, "/v1/jobs?limit=0", None, 400, "limit"),
        case(Method::GET, "/v1/jobs?status=done", None, 400, "status"),
        case(Method::GET, "/v1/jobs?cursor=zzz", None, 400, "cursor"),
        case(
            Method::POST,
            "/v1/tasks/report",
            post_job(
                json!({ "job_id": "j", "task_id": "t", "lease_id": "l", "status": "Running" }),
            ),
            400,
            "Completed or Failed",
        ),
        case(
            Method::POST,
            "/v1/tasks/report",
            post_job(json!({ "job_id": "j", "task_id": "t", "status": "Completed" })),
            400,
            "lease_id",
        ),
        case(
            Method::POST,
            "/v1/tasks/report",
            post_job(
                json!({ "reports": [{ "job_id": "j", "task_id": "t", "lease_id": "l", "status": "Queued" }] }),
            ),
            400,
            "reports[0]",
        ),
        case(
            Method::POST,
            "/v1/workers/register",
            post_job(json!({ "worker_id": "" })),
            400,
            "worker_id",
        ),
        case(
            Method::POST,
            "/v1/workers/register",
            post_job(json!({ "worker_id": "w9", "gpu": "maybe" })),
            400,
            "gpu",
        ),
        case(
            Method::GET,
            "/v1/workers/w1/assignments?max_tasks=0",
            None,
            400,
            "max_tasks",
        ),
        case(
            Method::GET,
            "/v1/workers/w1/assignments?wait_seconds=-1",
            None,
            400,
            "wait_seconds",
        ),
        case(Method::GET, "/v1/nope", None, 404, "no such route"),
    ]
}

async fn snapshot(app: &TestApp, job: &str) -> Value {
    let (_, jobs) = app.get("/v1/jobs?limit=500").await;
    let (_, tasks) = app.get(&format!("/v1/jobs/{job}/tasks")).await;
    let (_, workers) = app.get("/v1/workers").await;
    let (_, metrics) = app.get("/v1/metrics").await;
    json!({ "jobs": jobs, "tasks": tasks, "workers": workers, "depth": metrics["queue_depth"] })
}

/// Each bad request gets its status, the JSON error shape and a message naming the problem;
/// none of them changes the stored state.
#[tokio::test]
async fn bad_requests_are_rejected_clearly_and_change_nothing() {
    let app = spawn_app().await;
    app.register("w1").await;
    let job = app.submit(dag(&[("a", &[])])).await;
    let before = snapshot(&app, &job).await;

    for c in cases() {
        let mut req = app.http.request(c.method.clone(), app.url(c.path));
        if let Some(body) = c.body.clone() {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let what = format!("{} {}", c.method, c.path);
        assert_eq!(status, c.status, "{what}: {body}");
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no JSON error: {body}"));
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
        assert!(
            message.contains(c.mentions),
            "{what}: `{message}` should mention `{}`",
            c.mentions
        );
    }

    assert_eq!(snapshot(&app, &job).await, before);
}
