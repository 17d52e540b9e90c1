//! Metrics through the admin router: after a scripted run on a clock the test moves, every
//! value is exactly what the run implies, the JSON and the Prometheus text agree, job ids are
//! never labels, and free-form labels past the cap fold into `other`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use splai_shared::metrics::parse::{Exposition, Sample, parse};

use crate::helpers::*;

/// The Prometheus text of the server, parsed.
pub async fn prometheus(app: &TestApp) -> (String, Exposition) {
    let resp = app
        .request(reqwest::Method::GET, "/v1/metrics/prometheus")
        .send()
        .await
        .expect("GET prometheus");
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await.expect("body");
    let parsed = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, parsed)
}

/// The JSON endpoint's `metrics` turned into the samples the text format would carry.
fn samples_of_json(metrics: &Value) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut out = Vec::new();
    let labels_of = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    };
    for (name, family) in metrics.as_object().expect("metrics object") {
        let kind = family["type"].as_str().unwrap();
        types.insert(name.clone(), kind.to_owned());
        for s in family["series"].as_array().unwrap() {
            let labels = labels_of(&s["labels"]);
            let sample = |n: String, l: BTreeMap<String, String>, v: &Value| Sample {
                name: n,
                labels: l,
                value: v.as_f64().unwrap(),
            };
            if kind == "histogram" {
                for b in s["buckets"].as_array().unwrap() {
                    let mut l = labels.clone();
                    l.insert("le".into(), b["le"].as_str().unwrap().to_owned());
                    out.push(sample(format!("{name}_bucket"), l, &b["count"]));
                }
                out.push(sample(format!("{name}_sum"), labels.clone(), &s["sum"]));
                out.push(sample(format!("{name}_count"), labels, &s["count"]));
            } else {
                out.push(sample(name.clone(), labels, &s["value"]));
            }
        }
    }
    (types, out)
}

/// Samples other than those describing the metrics requests themselves (which change between
/// the two requests), sorted for comparison.
/// A sample as a sortable key: name, labels, value bits.
type Key = (String, Vec<(String, String)>, u64);

fn comparable(samples: &[Sample]) -> Vec<Key> {
    let mut v: Vec<_> = samples
        .iter()
        .filter(|s| {
            !s.labels
                .get("route")
                .is_some_and(|r| r.starts_with("/v1/metrics"))
        })
        .map(|s| {
            (
                s.name.clone(),
                s.labels.clone().into_iter().collect(),
                s.value.to_bits(),
            )
        })
        .collect();
    v.sort();
    v
}

fn job(kind: &str, tenant: &str) -> Value {
    json!({ "type": kind, "tenant": tenant, "input": "hi",
            "tasks": [{ "task_id": "a", "type": "llm_inference", "inputs": { "prompt": "x" } }] })
}

async fn fail(app: &TestApp, a: &Value, key: &str) {
    let body = json!({
        "job_id": a["job_id"], "task_id": a["task_id"], "lease_id": a["lease_id"],
        "idempotency_key": key, "status": "Failed", "error": "model server said no",
    });
    let (code, resp) = app.post("/v1/tasks/report", &body).await;
    assert_eq!(code, StatusCode::OK, "{resp}");
}

fn by_job<'a>(claimed: &'a [Value], job: &str) -> &'a Value {
    claimed
        .iter()
        .find(|a| a["job_id"] == job)
        .unwrap_or_else(|| panic!("{job} not claimed: {claimed:?}"))
}

/// A sample the run must produce: name, labels, value.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Four jobs; two retried once then completed; one failed on all three attempts and
/// dead-lettered. Every value is what the run implies, in both formats.
#[tokio::test]
async fn scripted_run_gives_exact_values_in_both_formats() {
    // Immediate retries, so the test knows when each retry became ready.
    let app = spawn_app_with(&[("SPLAI_RETRY_BASE_MS", "0")]).await;
    let step = |s| app.clock.advance(Duration::from_secs(s));
    app.register("w1").await;
    app.register("w2").await;
    let a = app.submit(job("chat", "acme")).await;
    let b = app.submit(job("chat", "acme")).await;
    let c = app.submit(job("summarize", "beta")).await;
    let d = app.submit(job("chat", "beta")).await;

    // t=0: w1 claims all four (each waited 0 s).
    let first = app.claim("w1", 4).await;
    assert_eq!(first.len(), 4);
    step(2);
    // t=2: a completes; b, c, d fail retryably (ran 2 s each).
    app.report(by_job(&first, &a), "Completed").await;
    for j in [&b, &c, &d] {
        fail(&app, by_job(&first, j), &format!("{j}-1")).await;
    }
    step(1);
    // t=3: w2 claims the three retries (each waited 1 s since its immediate retry time).
    let second = app.claim("w2", 4).await;
    assert_eq!(second.len(), 3);
    step(1);
    // t=4: one heartbeat renews b's lease.
    let lease = by_job(&second, &b);
    let hb = json!({ "leases": [{ "job_id": lease["job_id"], "task_id": lease["task_id"], "lease_id": lease["lease_id"] }] });
    let (_, reply) = app.post("/v1/workers/w2/heartbeat", &hb).await;
    assert_eq!(reply["renewed"].as_array().unwrap().len(), 1, "{reply}");
    step(2);
    // t=6: b and c complete (ran 3 s); d fails again (ran 3 s) and is claimed at once.
    app.report(by_job(&second, &b), "Completed").await;
    app.report(by_job(&second, &c), "Completed").await;
    fail(&app, by_job(&second, &d), "d-2").await;
    let third = app.claim("w2", 1).await;
    assert_eq!(third.len(), 1);
    step(1);
    // t=7: d fails on its last attempt (ran 1 s): dead-lettered, its job failed.
    fail(&app, &third[0], "d-3").await;
    assert_eq!(app.job(&d).await["status"], "Failed");

    let (status, j) = app.get("/v1/metrics").await;
    assert_eq!(status, StatusCode::OK, "{j}");
    let (text, p) = prometheus(&app).await;

    let sqlite = ("queue_backend", "sqlite");
    let expected: &[Expected] = &[
        (
            "jobs_submitted_total",
            &[("job_type", "chat"), ("tenant", "acme")],
            2.0,
        ),
        (
            "jobs_submitted_total",
            &[("job_type", "chat"), ("tenant", "beta")],
            1.0,
        ),
        (
            "jobs_submitted_total",
            &[("job_type", "summarize"), ("tenant", "beta")],
            1.0,
        ),
        (
            "jobs_completed_total",
            &[("job_type", "chat"), ("tenant", "acme")],
            2.0,
        ),
        (
            "jobs_completed_total",
            &[("job_type", "summarize"), ("tenant", "beta")],
            1.0,
        ),
        (
            "jobs_failed_total",
            &[("job_type", "chat"), ("tenant", "beta")],
            1.0,
        ),
        ("queue_claimed_total", &[sqlite, ("worker_id", "w1")], 4.0),
        ("queue_claimed_total", &[sqlite, ("worker_id", "w2")], 4.0),
        ("queue_acked_total", &[sqlite, ("worker_id", "w1")], 1.0),
        ("queue_acked_total", &[sqlite, ("worker_id", "w2")], 2.0),
        (
            "queue_nacked_total",
            &[sqlite, ("worker_id", "w1"), ("reason", "retryable")],
            3.0,
        ),
        (
            "queue_nacked_total",
            &[sqlite, ("worker_id", "w2"), ("reason", "retryable")],
            1.0,
        ),
        (
            "queue_nacked_total",
            &[sqlite, ("worker_id", "w2"), ("reason", "exhausted")],
            1.0,
        ),
        ("queue_expired_requeued_total", &[sqlite], 0.0),
        ("dead_letter_total", &[sqlite], 1.0),
        ("dead_letter_requeued_total", &[sqlite], 0.0),
        ("dead_letter_count", &[sqlite], 1.0),
        ("lease_renewals_total", &[sqlite, ("worker_id", "w2")], 1.0),
        ("reports_duplicate_total", &[], 0.0),
        ("reports_stale_total", &[], 0.0),
        ("queue_depth", &[sqlite, ("priority", "interactive")], 0.0),
        ("queue_depth", &[sqlite, ("priority", "standard")], 0.0),
        ("queue_depth", &[sqlite, ("priority", "batch")], 0.0),
        ("queue_leased", &[sqlite], 0.0),
        ("workers", &[("health", "healthy")], 2.0),
        ("workers", &[("health", "stale")], 0.0),
        // Waits: five claims at once (0 s), three retries after 1 s.
        (
            "task_wait_seconds_count",
            &[("task_type", "llm_inference")],
            8.0,
        ),
        (
            "task_wait_seconds_sum",
            &[("task_type", "llm_inference")],
            3.0,
        ),
        (
            "task_wait_seconds_bucket",
            &[("task_type", "llm_inference"), ("le", "0.005")],
            5.0,
        ),
        (
            "task_wait_seconds_bucket",
            &[("task_type", "llm_inference"), ("le", "0.5")],
            5.0,
        ),
        (
            "task_wait_seconds_bucket",
            &[("task_type", "llm_inference"), ("le", "1")],
            8.0,
        ),
        (
            "task_wait_seconds_bucket",
            &[("task_type", "llm_inference"), ("le", "+Inf")],
            8.0,
        ),
        // Runs: completed 2 + 3 + 3 s; failed 2 + 2 + 2 + 3 + 1 s.
        (
            "task_run_seconds_count",
            &[("task_type", "llm_inference"), ("outcome", "completed")],
            3.0,
        ),
        (
            "task_run_seconds_sum",
            &[("task_type", "llm_inference"), ("outcome", "completed")],
            8.0,
        ),
        (
            "task_run_seconds_count",
            &[("task_type", "llm_inference"), ("outcome", "failed")],
            5.0,
        ),
        (
            "task_run_seconds_sum",
            &[("task_type", "llm_inference"), ("outcome", "failed")],
            10.0,
        ),
        (
            "task_run_seconds_bucket",
            &[
                ("task_type", "llm_inference"),
                ("outcome", "failed"),
                ("le", "1"),
            ],
            1.0,
        ),
        (
            "task_run_seconds_bucket",
            &[
                ("task_type", "llm_inference"),
                ("outcome", "failed"),
                ("le", "2.5"),
            ],
            4.0,
        ),
        (
            "task_run_seconds_bucket",
            &[
                ("task_type", "llm_inference"),
                ("outcome", "failed"),
                ("le", "5"),
            ],
            5.0,
        ),
        // Requests by route template: four submits, eight reports.
        (
            "http_request_duration_seconds_count",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "202")],
            4.0,
        ),
        (
            "http_request_duration_seconds_count",
            &[
                ("route", "/v1/tasks/report"),
                ("method", "POST"),
                ("status", "200"),
            ],
            8.0,
        ),
        (
            "http_request_duration_seconds_count",
            &[
                ("route", "/v1/jobs/{id}"),
                ("method", "GET"),
                ("status", "200"),
            ],
            1.0,
        ),
    ];
    for (name, labels, want) in expected {
        assert_eq!(
            p.value(name, labels),
            Some(*want),
            "{name} {labels:?}\n{text}"
        );
    }
    // Series that must not exist: no assignment errors, no other nack reasons or workers.
    assert_eq!(
        p.named("scheduler_assignment_errors_total").count(),
        0,
        "{text}"
    );
    assert_eq!(p.named("queue_nacked_total").count(), 3, "{text}");
    assert_eq!(p.named("jobs_canceled_total").count(), 0, "{text}");

    let types = [
        ("queue_claimed_total", "counter"),
        ("queue_acked_total", "counter"),
        ("queue_nacked_total", "counter"),
        ("queue_expired_requeued_total", "counter"),
        ("dead_letter_requeued_total", "counter"),
        ("dead_letter_count", "gauge"),
        ("scheduler_assignment_errors_total", "counter"),
        ("jobs_submitted_total", "counter"),
        ("queue_depth", "gauge"),
        ("workers", "gauge"),
        ("lease_renewals_total", "counter"),
        ("task_wait_seconds", "histogram"),
        ("task_run_seconds", "histogram"),
        ("http_request_duration_seconds", "histogram"),
    ];
    for (name, kind) in types {
        assert_eq!(p.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    // Every histogram series has buckets ending in +Inf equal to its count, and a sum.
    for (name, kind) in &p.types {
        if kind != "histogram" {
            continue;
        }
        for count in p.named(&format!("{name}_count")).collect::<Vec<_>>() {
            let mut inf = count.labels.clone();
            inf.insert("le".into(), "+Inf".into());
            let labels: Vec<(&str, &str)> =
                inf.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                p.value(&format!("{name}_bucket"), &labels),
                Some(count.value),
                "{name}"
            );
            let plain: Vec<(&str, &str)> = count
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert!(p.value(&format!("{name}_sum"), &plain).is_some(), "{name}");
        }
    }

    // The JSON carries exactly the same samples and types.
    let (json_types, json_samples) = samples_of_json(&j["metrics"]);
    assert_eq!(json_types, p.types);
    assert_eq!(comparable(&json_samples), comparable(&p.samples));
    // And its summary agrees.
    assert_eq!(j["queue_backend"], "sqlite");
    assert_eq!(j["counters"]["queue_claimed_total"], 8);
    assert_eq!(j["counters"]["queue_nacked_total"], 5);
    assert_eq!(j["dead_letter_count"], 1);

    for id in [&a, &b, &c, &d] {
        assert!(!text.contains(id.as_str()), "job id {id} in the metrics");
    }
}

/// Job ids never become labels (routes use their templates), and past the cap further tenants,
/// job types and workers are counted under `other`.
#[tokio::test]
async fn job_ids_are_never_labels_and_the_cap_folds_into_other() {
    let app = spawn_app_with(&[("SPLAI_METRICS_LABEL_CAP", "2")]).await;
    let mut ids = Vec::new();
    for i in 1..=4 {
        ids.push(app.submit(job(&format!("type{i}"), &format!("t{i}"))).await);
    }
    for (i, w) in ["w1", "w2", "w3"].iter().enumerate() {
        app.register(w).await;
        let got = app.claim(w, 1).await;
        assert_eq!(got.len(), 1, "{w}");
        app.get(&format!("/v1/jobs/{}", ids[i])).await;
        app.get(&format!("/v1/jobs/{}/tasks", ids[i])).await;
    }
    let (text, p) = prometheus(&app).await;
    let v = |name, labels: &[(&str, &str)]| p.value(name, labels);
    assert_eq!(
        v(
            "jobs_submitted_total",
            &[("job_type", "type1"), ("tenant", "t1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "jobs_submitted_total",
            &[("job_type", "type2"), ("tenant", "t2")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "jobs_submitted_total",
            &[("job_type", "other"), ("tenant", "other")]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(p.named("jobs_submitted_total").count(), 3, "{text}");
    let claimed = |w| {
        v(
            "queue_claimed_total",
            &[("queue_backend", "sqlite"), ("worker_id", w)],
        )
    };
    assert_eq!(
        (claimed("w1"), claimed("w2"), claimed("other")),
        (Some(1.0), Some(1.0), Some(1.0))
    );
    assert!(
        !text.contains("w3") && !text.contains("t3") && !text.contains("type4"),
        "{text}"
    );
    for id in &ids {
        assert!(
            !text.contains(id.as_str()),
            "job id {id} in the metrics:\n{text}"
        );
    }
    let routes: Vec<&str> = p
        .named("http_request_duration_seconds_count")
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert!(routes.contains(&"/v1/jobs/{id}"), "{routes:?}");
    assert!(routes.contains(&"/v1/jobs/{id}/tasks"), "{routes:?}");
    // A path no route matches is counted once under `unmatched`, not under its raw path.
    app.get("/v1/nothing/here").await;
    let (text, p) = prometheus(&app).await;
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(
        p.value("http_request_duration_seconds_count", &unmatched),
        Some(1.0)
    );
    assert!(!text.contains("/v1/nothing"), "{text}");
}
