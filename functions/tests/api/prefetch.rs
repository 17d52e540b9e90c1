//! `POST /v1/admin/models/prefetch` against the real server: one `model_download` task pinned
//! to each worker (claimed by it and no other), `only_missing` against the registered
//! inventory, every healthy worker when none is named, bad input writing nothing, and the
//! audit event.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use splai_functions::auth::fingerprint;

use crate::helpers::*;

const PATH: &str = "/v1/admin/models/prefetch";
const MODEL: &str = "org/tiny-model";

async fn register_with(app: &TestApp, worker: &str, models: &[&str]) {
    let body = json!({ "worker_id": worker, "cpu": 2, "backends": ["echo"], "models": models });
    let (status, resp) = app.post("/v1/workers/register", &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

/// Every job the server holds (the test servers start empty).
async fn job_ids(app: &TestApp) -> Vec<String> {
    let (status, body) = app.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["job_id"].as_str().expect("job_id").to_owned())
        .collect()
}

async fn prefetch_events(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get("/v1/admin/audit?action=model_prefetch").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"].as_array().expect("events").clone()
}

/// `(worker, status)` of each outcome, in order.
fn outcomes(resp: &Value) -> Vec<(String, String)> {
    resp["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| {
            let s = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
            (s("worker_id"), s("status"))
        })
        .collect()
}

fn pair(w: &str, s: &str) -> (String, String) {
    (w.to_owned(), s.to_owned())
}

/// Each named worker gets its own `model_download` task: another worker (even one claiming
/// first) gets nothing, and each claims exactly its own, carrying the executor's inputs. The
/// job is an ordinary job that completes when both report.
#[tokio::test]
async fn tasks_land_pinned_on_the_named_workers() {
    let app = spawn_app().await;
    for w in ["w1", "w2", "w3"] {
        app.register(w).await;
    }
    let body = json!({ "model": MODEL, "workers": ["w1", "w2", "w1"], "priority": "batch" });
    let (status, resp) = app.post(PATH, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    assert_eq!(
        outcomes(&resp),
        [pair("w1", "scheduled"), pair("w2", "scheduled")]
    );
    assert_eq!(
        (resp["scheduled"].as_u64(), resp["skipped"].as_u64()),
        (Some(2), Some(0))
    );
    let job_id = resp["job_id"].as_str().expect("job_id").to_owned();
    let job = app.job(&job_id).await;
    assert_eq!(
        (job["type"].as_str(), job["priority"].as_str()),
        (Some("model_prefetch"), Some("batch"))
    );

    assert!(app.claim("w3", 10).await.is_empty(), "w3 was not named");
    let mut claimed = Vec::new();
    for w in ["w2", "w1"] {
        let got = app.claim(w, 10).await;
        assert_eq!(got.len(), 1, "{w} claims only its own task: {got:?}");
        let a = &got[0];
        assert_eq!(
            (a["job_id"].as_str(), a["task_id"].as_str()),
            (Some(job_id.as_str()), Some(w))
        );
        assert_eq!(a["type"], "model_download");
        assert_eq!(a["constraints"]["worker_id"], w);
        assert_eq!(
            (
                &a["inputs"]["model"],
                &a["inputs"]["source"],
                &a["inputs"]["only_if_missing"]
            ),
            (&json!(MODEL), &json!("huggingface"), &json!(true))
        );
        claimed.push(a.clone());
    }
    for a in &claimed {
        app.report(a, "Completed").await;
    }
    assert_eq!(app.job(&job_id).await["status"], "Completed");
}

/// With no workers named, every healthy worker is a target (a stale one is not); with
/// `only_missing` a worker whose inventory lists the model is skipped; `only_missing: false`
/// schedules it too and asks for a fresh download; when every target has the model nothing
/// is written and the answer is 200 with no job.
#[tokio::test]
async fn only_missing_skips_workers_that_have_the_model() {
    let app = spawn_app().await;
    register_with(&app, "gone", &[]).await;
    app.clock.advance(Duration::from_secs(3600));
    register_with(&app, "has-it", &[MODEL]).await;
    register_with(&app, "lacks-it", &["org/other"]).await;

    let (status, resp) = app.post(PATH, &json!({ "model": MODEL })).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let mut got = outcomes(&resp);
    got.sort();
    assert_eq!(
        got,
        [pair("has-it", "skipped"), pair("lacks-it", "scheduled")]
    );
    let skipped = resp["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .find(|w| w["worker_id"] == "has-it")
        .expect("has-it");
    assert_eq!(skipped["reason"], "already_present");
    assert!(app.claim("has-it", 10).await.is_empty());
    assert!(
        app.claim("gone", 10).await.is_empty(),
        "stale workers are not targets"
    );
    assert_eq!(app.claim("lacks-it", 10).await.len(), 1);

    let body = json!({ "model": MODEL, "workers": ["has-it"], "only_missing": false });
    let (status, resp) = app.post(PATH, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");
    let forced = app.claim("has-it", 10).await;
    assert_eq!(forced.len(), 1, "{forced:?}");
    assert_eq!(forced[0]["inputs"]["only_if_missing"], false);

    let before = job_ids(&app).await;
    let body = json!({ "model": MODEL, "workers": ["has-it"], "only_missing": true });
    let (status, resp) = app.post(PATH, &body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(
        (resp["job_id"].clone(), resp["skipped"].as_u64()),
        (Value::Null, Some(1))
    );
    assert_eq!(job_ids(&app).await, before, "nothing to schedule, no job");
}

/// Bad input gets a 400 (or 404 for an unregistered worker, naming it; 409 for "every
/// worker" with none healthy) and writes nothing: no job, no task any worker could claim, no
/// audit event.
#[tokio::test]
async fn bad_prefetch_requests_write_nothing() {
    let empty = spawn_app().await;
    let (status, resp) = empty.post(PATH, &json!({ "model": MODEL })).await;
    assert_eq!(
        (status, &resp["error"]["code"]),
        (StatusCode::CONFLICT, &json!("conflict")),
        "{resp}"
    );

    let app = spawn_app().await;
    app.register("w1").await;
    let cases = [
        (json!({ "model": "" }), StatusCode::BAD_REQUEST, "`model`"),
        (
            json!({ "model": "   " }),
            StatusCode::BAD_REQUEST,
            "`model`",
        ),
        (
            json!({ "workers": ["w1"] }),
            StatusCode::BAD_REQUEST,
            "`model`",
        ),
        (
            json!({ "model": "../etc" }),
            StatusCode::BAD_REQUEST,
            "`model`",
        ),
        (
            json!({ "model": "a/b/c" }),
            StatusCode::BAD_REQUEST,
            "`model`",
        ),
        (
            json!({ "model": MODEL, "source": "s3" }),
            StatusCode::BAD_REQUEST,
            "`source`",
        ),
        (
            json!({ "model": MODEL, "workers": ["bad id"] }),
            StatusCode::BAD_REQUEST,
            "workers",
        ),
        (
            json!({ "model": MODEL, "workers": "w1" }),
            StatusCode::BAD_REQUEST,
            "workers",
        ),
        (
            json!({ "model": MODEL, "priority": "urgent" }),
            StatusCode::BAD_REQUEST,
            "priority",
        ),
        (
            json!({ "model": MODEL, "tenant": "not ok" }),
            StatusCode::BAD_REQUEST,
            "tenant",
        ),
        (
            json!({ "model": MODEL, "workers": ["w1", "ghost", "phantom"] }),
            StatusCode::NOT_FOUND,
            "ghost, phantom",
        ),
    ];
    for (body, want, names) in cases {
        let (status, resp) = app.post(PATH, &body).await;
        assert_eq!(status, want, "{body}: {resp}");
        let message = resp["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {resp}");
    }
    assert!(job_ids(&app).await.is_empty());
    assert!(app.claim("w1", 10).await.is_empty());
    assert!(prefetch_events(&app).await.is_empty());
    assert!(prefetch_events(&empty).await.is_empty());
}

/// A prefetch appends one `model_prefetch` event: the operator's fingerprint as actor, the
/// tenant, how many workers were asked for, a payload hash, and the job and counts.
#[tokio::test]
async fn prefetch_is_audited() {
    let mut app = spawn_app_with(&[(
        "SPLAI_API_TOKENS",
        "ops-tok:operator,root-tok:admin,w-tok:task:report",
    )])
    .await;
    app.token = Some("w-tok".into());
    register_with(&app, "w1", &[MODEL]).await;
    register_with(&app, "w2", &[]).await;
    app.token = Some("ops-tok".into());
    let body =
        json!({ "model": MODEL, "workers": ["w1", "w2"], "only_missing": true, "tenant": "acme" });
    let (status, resp) = app.post(PATH, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{resp}");

    app.token = Some("root-tok".into());
    let events = prefetch_events(&app).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["actor"], json!(fingerprint("ops-tok")));
    assert_eq!(
        (e["tenant"].as_str(), e["result"].as_str()),
        (Some("acme"), Some("ok"))
    );
    assert_eq!(
        (e["resource"].as_str(), e["requested"].as_u64()),
        (Some(PATH), Some(2))
    );
    assert_eq!(e["payload_hash"].as_str().map(str::len), Some(64));
    assert_eq!(e["details"]["job_id"], resp["job_id"]);
    assert_eq!(
        (
            e["details"]["model"].as_str(),
            e["details"]["scheduled"].as_u64(),
            e["details"]["skipped"].as_u64()
        ),
        (Some(MODEL), Some(1), Some(1))
    );
    let job = app.job(resp["job_id"].as_str().expect("job_id")).await;
    assert_eq!(job["tenant"], "acme");
    assert!(!e.to_string().contains("ops-tok"));
}
