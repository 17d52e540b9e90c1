//! Tokens, scopes, roles and tenant isolation against the real server.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use splai_functions::config::Config;
use splai_shared::domain::JobId;

use crate::helpers::*;

const TOKENS: &str = "root-tok:admin,\
    reader-tok:job:read,\
    alpha-tok:tenant:alpha|job:read|job:submit|job:cancel,\
    beta-tok:tenant:beta|job:read|job:submit|job:cancel,\
    worker-tok:task:report,\
    beta-worker-tok:task:report|tenant:beta,\
    runner-tok:tenant:gamma";
const ROLES: &str = "auditor=job:read|metrics;submitter=job:submit";
const TOKEN_ROLES: &str = "auditor-tok=auditor,runner-tok=tenant-runner,ops-tok=ops";
/// The dead-letter requeue confirmation token of the log test.
const CONFIRM: &str = "confirm-secret-9f2";

async fn secured() -> TestApp {
    spawn_app_with(&[
        ("SPLAI_API_TOKENS", TOKENS),
        ("SPLAI_API_ROLES", ROLES),
        ("SPLAI_API_TOKEN_ROLES", TOKEN_ROLES),
    ])
    .await
}

/// One call with `token` as a Bearer token (none when `None`); the body as text.
async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = app.http.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    (resp.status(), resp.text().await.expect("body"))
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// Submits `body` as `token`, returning the job id.
async fn submit_as(app: &TestApp, token: &str, body: Value) -> String {
    let (status, resp) = call(app, Method::POST, "/v1/jobs", Some(token), Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    v["job_id"].as_str().expect("job_id").to_owned()
}

fn one_task(tenant: Option<&str>) -> Value {
    let mut body = dag(&[("a", &[])]);
    if let Some(t) = tenant {
        body["tenant"] = json!(t);
    }
    body
}

/// Claims one task for `worker` with `token`.
async fn claim_as(app: &TestApp, token: &str, worker: &str) -> Value {
    let path = format!("/v1/workers/{worker}/assignments?max_tasks=1");
    let (status, body) = call(app, Method::GET, &path, Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["assignments"][0].clone()
}

fn inline_report(a: &Value) -> Value {
    json!({
        "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"],
        "status": "Completed", "output": { "text": "done" },
    })
}

async fn register_as(app: &TestApp, token: &str, worker: &str) {
    let body = json!({ "worker_id": worker, "cpu": 2, "backends": ["echo"] });
    let (status, resp) = call(
        app,
        Method::POST,
        "/v1/workers/register",
        Some(token),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

#[tokio::test]
async fn auth_is_off_by_default() {
    let app = spawn_app().await;
    let (status, body) = call(&app, Method::GET, "/v1/jobs", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(&app, Method::GET, "/v1/workers", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn both_header_forms_are_accepted() {
    let app = secured().await;
    for (header, value, expected) in [
        ("Authorization", "Bearer reader-tok", StatusCode::OK),
        ("X-SPLAI-Token", "reader-tok", StatusCode::OK),
        (
            "Authorization",
            "Basic reader-tok",
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let resp = app
            .http
            .get(app.url("/v1/jobs"))
            .header(header, value)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), expected, "{header}: {value}");
    }
}

/// A custom role (`SPLAI_API_ROLES`) and the built-in `ops` grant their scopes and no more;
/// `tenant-runner` given to a token with its own tenant scope submits and cancels in that
/// tenant. (The built-in `admin`, `tenant-runner` and `tenant-reader` on every route: the
/// scope matrix.)
#[tokio::test]
async fn custom_and_built_in_roles_grant_their_scopes() {
    let app = secured().await;
    let expect = [
        // custom role `auditor` = job:read|metrics
        ("auditor-tok", Method::GET, "/v1/jobs", StatusCode::OK),
        ("auditor-tok", Method::GET, "/v1/metrics", StatusCode::OK),
        (
            "auditor-tok",
            Method::GET,
            "/v1/metrics/prometheus",
            StatusCode::OK,
        ),
        (
            "auditor-tok",
            Method::GET,
            "/v1/workers",
            StatusCode::FORBIDDEN,
        ),
        // built-in `ops`
        ("ops-tok", Method::GET, "/v1/workers", StatusCode::OK),
        ("ops-tok", Method::GET, "/v1/metrics", StatusCode::OK),
        (
            "ops-tok",
            Method::GET,
            "/v1/metrics/prometheus",
            StatusCode::OK,
        ),
        ("ops-tok", Method::GET, "/v1/jobs", StatusCode::OK),
    ];
    for (token, method, path, want) in expect {
        let (status, body) = call(&app, method.clone(), path, Some(token), None).await;
        assert_eq!(status, want, "{token} {method} {path}: {body}");
    }
    for token in ["auditor-tok", "ops-tok"] {
        let (status, body) = call(
            &app,
            Method::POST,
            "/v1/jobs",
            Some(token),
            Some(one_task(None)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}: {body}");
    }
    // built-in `tenant-runner` with the token's own tenant scope: submits in its tenant only.
    let job = submit_as(&app, "runner-tok", one_task(Some("gamma"))).await;
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some("runner-tok"),
        Some(one_task(Some("alpha"))),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/v1/jobs/{job}"),
        Some("runner-tok"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = call(&app, Method::GET, "/v1/jobs", Some("root-tok"), None).await;
    assert!(body.contains(&job), "{body}");
}

#[tokio::test]
async fn a_tenant_token_never_reaches_another_tenants_job() {
    let app = secured().await;
    // No tenant named: `default`, which alpha may not act in.
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/jobs",
        Some("alpha-tok"),
        Some(one_task(None)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The tenant from X-SPLAI-Tenant.
    let resp = app
        .http
        .post(app.url("/v1/jobs"))
        .bearer_auth("alpha-tok")
        .header("X-SPLAI-Tenant", "alpha")
        .json(&one_task(None))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let alpha_job = resp.json::<Value>().await.expect("json")["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let beta_job = submit_as(&app, "beta-tok", one_task(Some("beta"))).await;
    let batch = json!({ "jobs": [one_task(Some("beta")), one_task(Some("alpha"))] });
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/jobs/batch",
        Some("beta-tok"),
        Some(batch),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["accepted"].as_u64(), v["rejected"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    assert_eq!(v["results"][1]["error"]["code"], "forbidden", "{v}");
    let batch_job = v["results"][0]["job_id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.engine
            .job(&JobId::parse(alpha_job.clone()).expect("id"))
            .await
            .expect("job")
            .tenant
            .to_string(),
        "alpha"
    );

    // Complete alpha's task so that it has an output to ask for.
    register_as(&app, "worker-tok", "w1").await;
    let a = claim_as(&app, "worker-tok", "w1").await;
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/tasks/report",
        Some("worker-tok"),
        Some(inline_report(&a)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(a["job_id"], json!(alpha_job), "claims are FIFO");

    let paths = [
        (Method::GET, format!("/v1/jobs/{alpha_job}")),
        (Method::DELETE, format!("/v1/jobs/{alpha_job}")),
        (Method::POST, format!("/v1/jobs/{alpha_job}/retry")),
        (Method::GET, format!("/v1/jobs/{alpha_job}/tasks")),
        (Method::GET, format!("/v1/jobs/{alpha_job}/stream")),
        (Method::GET, format!("/v1/jobs/{alpha_job}/tasks/a/output")),
        (Method::GET, format!("/v1/jobs/{alpha_job}/webhooks")),
    ];
    for (method, path) in &paths {
        let (status, body) = call(&app, method.clone(), path, Some("beta-tok"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(code(&body), "not_found");
        // Exactly what a job that does not exist gets.
        let missing = path.replace(&alpha_job, "job-nope");
        let (_, absent) = call(&app, method.clone(), &missing, Some("beta-tok"), None).await;
        assert_eq!(
            body.replace(&alpha_job, "job-nope"),
            absent,
            "{method} {path}"
        );
    }
    // Its owner and an admin still see it; the output is there.
    let (status, body) = call(&app, Method::GET, &paths[0].1, Some("alpha-tok"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, Method::GET, &paths[5].1, Some("alpha-tok"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Listing is filtered to the caller's tenants, whatever it asks for.
    let (_, mine) = call(&app, Method::GET, "/v1/jobs", Some("beta-tok"), None).await;
    assert!(
        mine.contains(&beta_job) && mine.contains(&batch_job) && !mine.contains(&alpha_job),
        "{mine}"
    );
    let (status, theirs) = call(
        &app,
        Method::GET,
        "/v1/jobs?tenant=alpha",
        Some("beta-tok"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!theirs.contains(&alpha_job), "{theirs}");
    let (_, all) = call(&app, Method::GET, "/v1/jobs", Some("root-tok"), None).await;
    assert!(all.contains(&alpha_job) && all.contains(&beta_job), "{all}");

    // A beta-scoped worker token cannot report on alpha's job; an unscoped one can.
    let third = submit_as(&app, "alpha-tok", one_task(Some("alpha"))).await;
    let mut alpha_lease = claim_as(&app, "worker-tok", "w1").await;
    while alpha_lease["job_id"] != json!(third) {
        assert!(!alpha_lease.is_null(), "alpha's new task was claimed");
        alpha_lease = claim_as(&app, "worker-tok", "w1").await;
    }
    let report = inline_report(&alpha_lease);
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/tasks/report",
        Some("beta-worker-tok"),
        Some(report.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let batch = json!({ "reports": [report.clone()] });
    let (status, _) = call(
        &app,
        Method::POST,
        "/v1/tasks/report",
        Some("beta-worker-tok"),
        Some(batch),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &app,
        Method::POST,
        "/v1/tasks/report",
        Some("worker-tok"),
        Some(report),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A worker token registers, claims, heartbeats, reports, and reads outputs for dependents
/// (what it may not do: the scope matrix's `worker` column).
#[tokio::test]
async fn a_worker_token_runs_tasks_and_reads_outputs() {
    let mut app = secured().await;
    app.token = Some("root-tok".into());
    let job = app.submit(one_task(None)).await;
    app.token = Some("worker-tok".into());
    app.register("w1").await;
    let a = app.claim("w1", 1).await.remove(0);
    let hb = json!({ "leases": [{ "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"] }] });
    let (status, body) = app.post("/v1/workers/w1/heartbeat", &hb).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post("/v1/tasks/report", &inline_report(&a)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Dependents read outputs through the gateway with the worker's token.
    let (status, body) = app.get(&format!("/v1/jobs/{job}/tasks/a/output")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "text": "done" })));
}

#[tokio::test]
async fn invalid_auth_variables_fail_start_up_naming_the_variable() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("SPLAI_API_TOKENS", "secret-one")], "SPLAI_API_TOKENS"),
        (
            &[("SPLAI_API_TOKENS", "secret-one:job:write")],
            "SPLAI_API_TOKENS",
        ),
        (&[("SPLAI_API_TOKENS", ":job:read")], "SPLAI_API_TOKENS"),
        (
            &[
                ("SPLAI_API_TOKENS", "secret-one:job:read"),
                ("SPLAI_API_ROLES", "auditor"),
            ],
            "SPLAI_API_ROLES",
        ),
        (
            &[
                ("SPLAI_API_TOKENS", "secret-one:job:read"),
                ("SPLAI_API_TOKEN_ROLES", "secret-one=boss"),
            ],
            "SPLAI_API_TOKEN_ROLES",
        ),
        (
            &[("SPLAI_API_TOKEN_ROLES", "secret-one=admin")],
            "SPLAI_API_TOKENS",
        ),
    ];
    for (vars, name) in cases {
        let e = Config::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect_err("invalid auth variables are refused");
        let m = format!("{e:#}");
        assert!(m.contains(name), "{vars:?}: {m}");
        assert!(!m.contains("secret-one"), "the token leaks: {m}");
    }
}

/// Everything logged in this test binary, from the moment the log test starts. A global
/// subscriber, since a scoped one misses events while other tests run in parallel.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Authenticated calls on every router, with right, wrong and unknown tokens and the requeue
/// confirmation token: none of them appears in the log output, the audit log or the metrics.
#[tokio::test]
async fn no_token_reaches_the_logs() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let app = spawn_app_with(&[
        ("SPLAI_API_TOKENS", TOKENS),
        ("SPLAI_API_ROLES", ROLES),
        ("SPLAI_API_TOKEN_ROLES", TOKEN_ROLES),
        ("SPLAI_ADMIN_REQUEUE_CONFIRM_TOKEN", CONFIRM),
        ("SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD", "0"),
    ])
    .await;
    let job = submit_as(&app, "root-tok", one_task(None)).await;
    for token in [
        "root-tok",
        "reader-tok",
        "beta-tok",
        "worker-tok",
        "guessed-tok",
    ] {
        call(
            &app,
            Method::GET,
            &format!("/v1/jobs/{job}"),
            Some(token),
            None,
        )
        .await;
        let resp = app
            .http
            .get(app.url("/v1/jobs"))
            .header("X-SPLAI-Token", token)
            .send()
            .await
            .expect("GET");
        assert!(!resp.text().await.expect("body").contains(token));
    }
    register_as(&app, "worker-tok", "w1").await;
    let a = claim_as(&app, "worker-tok", "w1").await;
    call(
        &app,
        Method::POST,
        "/v1/tasks/report",
        Some("worker-tok"),
        Some(inline_report(&a)),
    )
    .await;
    // The admin and policy routes, and the requeue confirmation token, right and wrong.
    let prefetch = json!({ "model": "org/tiny", "workers": ["w1"] });
    let requeue = json!({ "tasks": [{ "job_id": job, "task_id": "a" }], "dry_run": true });
    for confirm in [CONFIRM, "wrong-confirm-secret"] {
        let resp = app
            .http
            .post(app.url("/v1/admin/queue/dead-letter"))
            .bearer_auth("ops-tok")
            .header("X-SPLAI-Confirm", confirm)
            .json(&requeue)
            .send()
            .await
            .expect("POST");
        assert!(!resp.text().await.expect("body").contains(confirm));
    }
    for (method, path, token, body) in [
        (
            Method::POST,
            "/v1/admin/models/prefetch",
            "ops-tok",
            Some(prefetch),
        ),
        (Method::GET, "/v1/admin/queue/dead-letter", "ops-tok", None),
        (Method::GET, "/v1/admin/audit", "root-tok", None),
        (Method::GET, "/v1/admin/audit", "ops-tok", None),
        (Method::GET, "/v1/policy", "ops-tok", None),
    ] {
        let (_, resp) = call(&app, method, path, Some(token), body).await;
        assert!(!resp.contains(token), "{path}: {resp}");
    }
    // What was recorded about all this: the audit log (actors are fingerprints) and metrics.
    let (_, audit) = call(
        &app,
        Method::GET,
        "/v1/admin/audit?format=csv&limit=1000",
        Some("root-tok"),
        None,
    )
    .await;
    assert!(
        audit.contains(&splai_functions::auth::fingerprint("ops-tok")),
        "{audit}"
    );
    let (_, metrics) = call(&app, Method::GET, "/v1/metrics", Some("ops-tok"), None).await;
    let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    assert!(text.contains("/v1/jobs"), "requests are logged:\n{text}");
    assert!(
        text.contains("/v1/admin/"),
        "admin requests are logged:\n{text}"
    );
    for token in [
        "root-tok",
        "reader-tok",
        "beta-tok",
        "worker-tok",
        "ops-tok",
        "guessed-tok",
        CONFIRM,
        "wrong-confirm-secret",
    ] {
        assert!(!text.contains(token), "{token} logged:\n{text}");
        assert!(!audit.contains(token), "{token} audited:\n{audit}");
        assert!(!metrics.contains(token), "{token} in metrics:\n{metrics}");
    }
}
