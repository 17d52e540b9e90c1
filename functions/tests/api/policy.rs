//! Policy (`SPLAI_POLICY_FILE`) through the HTTP API: denied submits, the running-jobs quota,
//! assignment rules, and the audit trail of each decision.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const POLICY: &str = "\
default_action: allow
tenant_quotas:
  tenant-a:
    max_running_jobs: 1
rules:
  - name: deny-confidential-external
    effect: deny
    reason: confidential_external_forbidden
    match:
      data_classification: confidential
      model: external_api
  - name: no-inference-on-w-bad
    effect: deny
    reason: untrusted_worker
    match:
      worker_locality: w-bad
";

async fn app_with_policy() -> (TestApp, tempfile::TempDir) {
    let files = tempfile::tempdir().expect("temp dir");
    let path = files.path().join("policy.yaml");
    std::fs::write(&path, POLICY).expect("write policy file");
    let app = spawn_app_with(&[("SPLAI_POLICY_FILE", path.to_str().expect("utf-8"))]).await;
    (app, files)
}

async fn audit(app: &TestApp, action: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/admin/audit?action={action}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().expect("events").clone()
}

async fn job_count(app: &TestApp) -> usize {
    let (status, body) = app.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["jobs"].as_array().expect("jobs").len()
}

/// A confidential job to an external model is refused with 403 and the reason, nothing is
/// written, and the decision is audited with the rule; an allowed one is audited too.
#[tokio::test]
async fn denied_confidential_external_job_gets_403_and_writes_nothing() {
    let (app, _files) = app_with_policy().await;
    let body = json!({
        "type": "chat", "input": "secret", "tenant": "tenant-b",
        "data_classification": "confidential", "model": "external_api",
    });
    let (status, resp) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
    let shown = resp.to_string();
    assert!(shown.contains("confidential_external_forbidden"), "{shown}");
    assert!(shown.contains("deny-confidential-external"), "{shown}");
    assert_eq!(job_count(&app).await, 0);

    app.submit(
        json!({ "type": "chat", "input": "hi", "tenant": "tenant-b", "model": "external_api" }),
    )
    .await;
    let events = audit(&app, "policy_check_submit").await;
    assert_eq!(events.len(), 2, "{events:?}");
    // Newest first.
    assert_eq!(events[0]["result"], "allowed");
    assert_eq!(events[1]["result"], "denied");
    assert_eq!(events[1]["details"]["rule"], "deny-confidential-external");
    assert_eq!(
        events[1]["details"]["reason"],
        "confidential_external_forbidden"
    );
    assert_eq!(events[1]["tenant"], "tenant-b");
}

/// `max_running_jobs: 1`: a second job for the tenant is refused naming the quota; once the
/// first finishes, the tenant may submit again. Other tenants are not limited.
#[tokio::test]
async fn running_jobs_quota_is_exhausted_and_released() {
    let (app, _files) = app_with_policy().await;
    let first = app
        .submit(json!({ "type": "chat", "input": "one", "tenant": "tenant-a" }))
        .await;
    let (status, resp) = app
        .post(
            "/v1/jobs",
            &json!({ "type": "chat", "input": "two", "tenant": "tenant-a" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
    assert!(resp.to_string().contains("max_running_jobs"), "{resp}");
    app.submit(json!({ "type": "chat", "input": "other", "tenant": "tenant-b" }))
        .await;

    app.register("w1").await;
    loop {
        let got = app.claim("w1", 10).await;
        if got.is_empty() {
            break;
        }
        for a in &got {
            app.report(a, "Completed").await;
        }
    }
    assert_eq!(app.job(&first).await["status"], "Completed");
    app.submit(json!({ "type": "chat", "input": "three", "tenant": "tenant-a" }))
        .await;
}

/// A rule denying a worker leaves the task queued (not failed) for another worker; both
/// decisions are audited.
#[tokio::test]
async fn assignment_denied_for_one_worker_goes_to_another() {
    let (app, _files) = app_with_policy().await;
    let job = app.submit(json!({ "type": "chat", "input": "hi" })).await;
    app.register("w-bad").await;
    app.register("w-good").await;

    let (status, resp) = app
        .get("/v1/workers/w-bad/assignments?max_tasks=10&wait_seconds=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        resp["assignments"].as_array().map(Vec::len),
        Some(0),
        "{resp}"
    );
    assert_eq!(app.tasks(&job).await[0]["status"], "Queued");

    let good = app.claim("w-good", 10).await;
    assert_eq!(good.len(), 1, "{good:?}");
    assert_eq!(good[0]["job_id"], job.as_str());

    let events = audit(&app, "policy_check_assignment").await;
    assert!(
        events.iter().any(|e| e["result"] == "denied"
            && e["details"]["rule"] == "no-inference-on-w-bad"
            && e["actor"] == "worker:w-bad"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["result"] == "allowed"),
        "{events:?}"
    );
}

/// `POST /v1/policy/evaluate` dry-runs a submission (decision and route, nothing written);
/// `GET /v1/policy` shows the effective policy and routing.
#[tokio::test]
async fn policy_router_evaluates_and_shows() {
    let files = tempfile::tempdir().expect("temp dir");
    let policy = files.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy file");
    let routing = files.path().join("routing.yaml");
    std::fs::write(
        &routing,
        "default_backend: ollama\ndefault_model: llama3-8b-q4\n",
    )
    .expect("write routing file");
    let app = spawn_app_with(&[
        ("SPLAI_POLICY_FILE", policy.to_str().expect("utf-8")),
        ("SPLAI_MODEL_ROUTING_FILE", routing.to_str().expect("utf-8")),
    ])
    .await;

    let denied = json!({
        "type": "chat", "input": "x", "data_classification": "confidential", "model": "external_api",
    });
    let (status, body) = app.post("/v1/policy/evaluate", &denied).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["allowed"], false, "{body}");
    assert_eq!(body["rule"], "deny-confidential-external");
    assert_eq!(body["reason"], "confidential_external_forbidden");
    assert_eq!(body["route"]["backend"], "ollama");
    assert_eq!(body["route"]["model"], "external_api");

    let (status, body) = app
        .post(
            "/v1/policy/evaluate",
            &json!({ "type": "chat", "input": "x" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["allowed"], true, "{body}");
    assert_eq!(body["reason"], "default_allow");
    assert_eq!(body["route"]["model"], "llama3-8b-q4");
    assert_eq!(job_count(&app).await, 0, "a dry run writes nothing");
    assert!(audit(&app, "policy_check_submit").await.is_empty());

    let (status, body) = app.get("/v1/policy").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["policy"]["default_action"], "allow", "{body}");
    assert_eq!(body["policy"]["rules"][0]["match"]["model"], "external_api");
    assert_eq!(
        body["policy"]["tenant_quotas"]["tenant-a"]["max_running_jobs"],
        1
    );
    assert_eq!(body["routing"]["default_backend"], "ollama");
}

/// `max_running_tasks: 1`: of two ready tasks only one is handed out; the other stays queued
/// and goes out once the first finishes.
#[tokio::test]
async fn running_tasks_quota_holds_back_tasks_until_one_finishes() {
    let files = tempfile::tempdir().expect("temp dir");
    let path = files.path().join("policy.yaml");
    std::fs::write(
        &path,
        "tenant_quotas:\n  tenant-a:\n    max_running_tasks: 1\n",
    )
    .expect("write policy file");
    let app = spawn_app_with(&[("SPLAI_POLICY_FILE", path.to_str().expect("utf-8"))]).await;
    let mut body = dag(&[("a", &[]), ("b", &[])]);
    body["tenant"] = json!("tenant-a");
    let job = app.submit(body).await;
    app.register("w1").await;

    let first = app.claim("w1", 10).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let statuses: Vec<Value> = app
        .tasks(&job)
        .await
        .iter()
        .map(|t| t["status"].clone())
        .collect();
    assert!(statuses.contains(&json!("Queued")), "{statuses:?}");
    let (status, resp) = app
        .get("/v1/workers/w1/assignments?max_tasks=10&wait_seconds=0")
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        resp["assignments"].as_array().map(Vec::len),
        Some(0),
        "{resp}"
    );

    app.report(&first[0], "Completed").await;
    let second = app.claim("w1", 10).await;
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0]["task_id"], first[0]["task_id"]);
    let events = audit(&app, "policy_check_assignment").await;
    assert!(
        events.iter().any(|e| e["result"] == "denied"
            && e["details"]["rule"] == "tenant_quotas.tenant-a.max_running_tasks"),
        "{events:?}"
    );
}

/// Rules are tried in file order and the first match decides, through the API: an allow rule
/// shadows a later deny for the same jobs (the submit is accepted and audited with the allow
/// rule's name), while a job only the later deny matches is refused by it.
#[tokio::test]
async fn the_first_matching_rule_decides_a_submit() {
    let files = tempfile::tempdir().expect("temp dir");
    let path = files.path().join("policy.yaml");
    let policy = "\
default_action: deny
rules:
  - name: allow-internal-batch
    effect: allow
    match:
      data_classification: internal
      priority: batch
  - name: deny-internal
    effect: deny
    reason: internal_needs_batch
    match:
      data_classification: internal
  - name: allow-rest
    effect: allow
    match:
      job_type: chat
";
    std::fs::write(&path, policy).expect("write policy file");
    let app = spawn_app_with(&[("SPLAI_POLICY_FILE", path.to_str().expect("utf-8"))]).await;
    let internal = |priority: &str| json!({ "type": "chat", "input": "x", "data_classification": "internal", "priority": priority });

    let id = app.submit(internal("batch")).await;
    let (status, resp) = app.post("/v1/jobs", &internal("standard")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{resp}");
    assert!(resp.to_string().contains("deny-internal"), "{resp}");
    app.submit(json!({ "type": "chat", "input": "x" })).await;
    let (_, resp) = app
        .post("/v1/policy/evaluate", &internal("interactive"))
        .await;
    assert_eq!(
        (&resp["allowed"], &resp["rule"]),
        (&json!(false), &json!("deny-internal"))
    );

    let events = audit(&app, "policy_check_submit").await;
    let rules: Vec<(&str, &str)> = events
        .iter()
        .rev()
        .map(|e| {
            (
                e["result"].as_str().unwrap_or_default(),
                e["details"]["rule"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("allowed", "allow-internal-batch"),
            ("denied", "deny-internal"),
            ("allowed", "allow-rest"),
        ]
    );
    assert_eq!(job_count(&app).await, 2);
    assert_eq!(app.job(&id).await["priority"], "batch");
}
