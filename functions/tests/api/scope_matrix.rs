//! The scope matrix: every route of the gateway, admin and policy routers, called with every
//! kind of token, against the status each should get. One table; every mismatch is reported
//! at once. A 401 or 403 must also carry its error code and never echo the token.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The token kinds, one column each, in this order.
const KINDS: [(&str, Option<&str>); 8] = [
    ("no token", None),
    ("unknown", Some("guessed-tok")),
    ("admin", Some("root-tok")),
    ("operator", Some("ops-tok")),
    ("metrics", Some("metrics-tok")),
    ("tenant-runner", Some("runner-tok")),
    ("tenant-reader", Some("reader-tok")),
    ("worker", Some("worker-tok")),
];

const TOKENS: &str = "root-tok:admin,ops-tok:operator,metrics-tok:metrics,\
    runner-tok:tenant:alpha,reader-tok:tenant:alpha,worker-tok:task:report";
const TOKEN_ROLES: &str = "runner-tok=tenant-runner,reader-tok=tenant-reader";

/// `{alpha}`: a completed alpha job whose task `a` has an output; `{beta}`: a beta job;
/// `{cancel}`: an alpha job to cancel; `{missing}`: a job id that does not exist.
struct Fixture {
    alpha: String,
    beta: String,
    cancel: String,
    report: Value,
}

impl Fixture {
    fn fill(&self, s: &str) -> String {
        s.replace("{alpha}", &self.alpha)
            .replace("{beta}", &self.beta)
            .replace("{cancel}", &self.cancel)
            .replace("{missing}", "job-missing")
    }
}

/// One row: method, path, body (`"report"` stands for a repeat of `{alpha}`'s report), and
/// the status for each token kind in [`KINDS`] order.
type Row = (Method, &'static str, Option<Value>, [u16; 8]);

#[rustfmt::skip]
fn table() -> Vec<Row> {
    use Method as M;
    let job = |tenant: &str| json!({ "type": "chat", "input": "hi", "tenant": tenant });
    let worker = json!({ "worker_id": "w1", "cpu": 2, "backends": ["echo"] });
    let requeue = json!({ "tasks": [{ "job_id": "job-missing", "task_id": "a" }], "dry_run": true });
    let prefetch = json!({ "model": "org/tiny", "workers": ["w1"] });
    // Statuses: [no token, unknown, admin, operator, metrics, tenant-runner, tenant-reader, worker].
    vec![
        // gateway: jobs
        (M::POST, "/v1/jobs", Some(job("alpha")), [401, 401, 202, 403, 403, 202, 403, 403]),
        (M::POST, "/v1/jobs", Some(job("beta")), [401, 401, 202, 403, 403, 403, 403, 403]),
        (M::GET, "/v1/jobs", None, [401, 401, 200, 403, 403, 200, 200, 403]),
        (M::POST, "/v1/jobs/batch", Some(json!({ "jobs": [job("alpha")] })), [401, 401, 200, 403, 403, 200, 403, 403]),
        (M::GET, "/v1/jobs/{alpha}", None, [401, 401, 200, 403, 403, 200, 200, 403]),
        (M::GET, "/v1/jobs/{beta}", None, [401, 401, 200, 403, 403, 404, 404, 403]),
        (M::GET, "/v1/jobs/{missing}", None, [401, 401, 404, 403, 403, 404, 404, 403]),
        (M::DELETE, "/v1/jobs/{cancel}", None, [401, 401, 200, 403, 403, 200, 403, 403]),
        (M::DELETE, "/v1/jobs/{beta}", None, [401, 401, 200, 403, 403, 404, 403, 403]),
        // retrying a completed job is a conflict: reaching it proves the scope passed
        (M::POST, "/v1/jobs/{alpha}/retry", None, [401, 401, 409, 403, 403, 409, 403, 403]),
        (M::GET, "/v1/jobs/{alpha}/tasks", None, [401, 401, 200, 403, 403, 200, 200, 403]),
        (M::GET, "/v1/jobs/{alpha}/tasks/a/output", None, [401, 401, 200, 403, 403, 200, 200, 200]),
        (M::GET, "/v1/jobs/{alpha}/stream", None, [401, 401, 200, 403, 403, 200, 200, 403]),
        // gateway: workers
        (M::GET, "/v1/workers", None, [401, 401, 200, 200, 403, 403, 403, 403]),
        (M::POST, "/v1/workers/register", Some(worker), [401, 401, 200, 403, 403, 403, 403, 200]),
        (M::POST, "/v1/workers/w1/heartbeat", Some(json!({})), [401, 401, 200, 403, 403, 403, 403, 200]),
        (M::GET, "/v1/workers/w1/assignments?max_tasks=1", None, [401, 401, 200, 403, 403, 403, 403, 200]),
        (M::POST, "/v1/workers/w1/release", Some(json!({ "leases": [] })), [401, 401, 200, 403, 403, 403, 403, 200]),
        (M::POST, "/v1/tasks/report", Some(json!("report")), [401, 401, 200, 403, 403, 403, 403, 200]),
        // metrics and health
        (M::GET, "/v1/metrics", None, [401, 401, 200, 200, 200, 403, 403, 403]),
        (M::GET, "/healthz", None, [200, 200, 200, 200, 200, 200, 200, 200]),
        (M::GET, "/readyz", None, [200, 200, 200, 200, 200, 200, 200, 200]),
        // admin
        (M::GET, "/v1/admin/queue/dead-letter", None, [401, 401, 200, 200, 403, 403, 403, 403]),
        (M::POST, "/v1/admin/queue/dead-letter", Some(requeue), [401, 401, 200, 200, 403, 403, 403, 403]),
        (M::POST, "/v1/admin/models/prefetch", Some(prefetch), [401, 401, 202, 202, 403, 403, 403, 403]),
        (M::GET, "/v1/admin/audit", None, [401, 401, 200, 403, 403, 403, 403, 403]),
        (M::GET, "/v1/admin/audit/verify", None, [401, 401, 200, 403, 403, 403, 403, 403]),
        // policy
        (M::GET, "/v1/policy", None, [401, 401, 200, 200, 403, 403, 403, 403]),
        (M::POST, "/v1/policy/evaluate", Some(json!({ "type": "chat", "input": "x" })), [401, 401, 200, 200, 403, 403, 403, 403]),
    ]
}

/// Two alpha jobs (one completed with an inline output) and one beta job, made as admin and
/// the worker.
async fn fixture(app: &mut TestApp) -> Fixture {
    app.token = Some("root-tok".into());
    let one = |tenant: &str| {
        let mut body = dag(&[("a", &[])]);
        body["tenant"] = json!(tenant);
        body
    };
    let alpha = app.submit(one("alpha")).await;
    app.token = Some("worker-tok".into());
    app.register("w1").await;
    let a = app.claim("w1", 1).await.remove(0);
    assert_eq!(a["job_id"], json!(alpha));
    let report = json!({
        "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"],
        "status": "Completed", "output": { "text": "done" },
    });
    let (status, body) = app.post("/v1/tasks/report", &report).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.token = Some("root-tok".into());
    let beta = app.submit(one("beta")).await;
    let cancel = app.submit(one("alpha")).await;
    app.token = None;
    Fixture {
        alpha,
        beta,
        cancel,
        report,
    }
}

/// Every route × every token kind gets the status in the table.
#[tokio::test]
async fn every_route_answers_each_token_kind_as_the_table_says() {
    let mut app = spawn_app_with(&[
        ("SPLAI_API_TOKENS", TOKENS),
        ("SPLAI_API_TOKEN_ROLES", TOKEN_ROLES),
    ])
    .await;
    let fx = fixture(&mut app).await;
    let mut mismatches = Vec::new();
    let mut checked = 0;
    for (method, path, body, want) in table() {
        let path = fx.fill(path);
        for ((kind, token), want) in KINDS.iter().zip(want) {
            let mut req = app.http.request(method.clone(), app.url(&path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            match &body {
                Some(b) if *b == json!("report") => req = req.json(&fx.report),
                Some(b) => req = req.json(b),
                None => {}
            }
            let resp = req.send().await.expect("request");
            let got = resp.status().as_u16();
            checked += 1;
            let denied = matches!(got, 401 | 403);
            // Success bodies are not needed (and a stream's may be long); errors are small.
            let text = if got != want || denied {
                tokio::time::timeout(Duration::from_secs(2), resp.text())
                    .await
                    .map_or_else(|_| "<no body in 2 s>".to_owned(), |t| t.unwrap_or_default())
            } else {
                String::new()
            };
            let label = format!("{method} {path} as {kind}");
            if got != want {
                mismatches.push(format!("{label}: want {want}, got {got}: {text}"));
            } else if denied {
                let code =
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)["error"]["code"]
                        .clone();
                let want_code = if got == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                if code != want_code {
                    mismatches.push(format!("{label}: error code {code}, want {want_code}"));
                }
                if token.is_some_and(|t| text.contains(t)) {
                    mismatches.push(format!("{label}: the token is echoed: {text}"));
                }
            }
        }
    }
    assert_eq!(checked, table().len() * KINDS.len());
    assert!(
        mismatches.is_empty(),
        "{} of {checked} calls differ from the table:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
