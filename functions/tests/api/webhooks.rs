//! Webhooks against the real server: a real axum receiver on loopback (allowed with
//! `SPLAI_WEBHOOK_ALLOW_PRIVATE=true`) that checks every signature the way the README tells
//! receivers to, answers from a script, and records what it got.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::*;

const SECRET: &str = "whsec-global";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    delivery: String,
    event: String,
    /// The signature matched the body under the expected secret.
    verified: bool,
    body: Value,
    answered: u16,
}

#[derive(Default)]
struct Inbox {
    /// Status codes to answer, in order; 200 once it runs out.
    script: VecDeque<u16>,
    got: Vec<Received>,
}

struct Receiver {
    addr: SocketAddr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start(secret: &str, script: &[u16]) -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox {
            script: script.iter().copied().collect(),
            got: Vec::new(),
        }));
        let state = (secret.to_owned(), inbox.clone());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, inbox }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn got(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().got.clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(|| async { self.got().len() >= n }).await;
        self.got()
    }
}

/// What a receiver does: parse `t=..,v1=..`, HMAC-SHA256 over `"<t>.<body>"`, compare, and
/// reject a timestamp more than five minutes away.
fn signature_ok(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = hex::decode(x).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

async fn receive(
    State((secret, inbox)): State<(String, Arc<Mutex<Inbox>>)>,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = signature_ok(&secret, &header("x-splai-signature"), &body);
    let mut inbox = inbox.lock().unwrap();
    let answered = inbox.script.pop_front().unwrap_or(200);
    inbox.got.push(Received {
        delivery: header("x-splai-delivery"),
        event: header("x-splai-event"),
        verified,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered,
    });
    AxumStatus::from_u16(answered).unwrap()
}

/// A server that may deliver to loopback, signing with [`SECRET`].
async fn open_app(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("SPLAI_WEBHOOK_SECRET", SECRET),
        ("SPLAI_WEBHOOK_ALLOW_PRIVATE", "true"),
    ];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

fn hooked_job(url: &str) -> Value {
    let mut body = dag(&[("a", &[])]);
    body["webhook_url"] = json!(url);
    body
}

async fn deliveries(app: &TestApp, job: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/jobs/{job}/webhooks")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job_id"], job);
    body["deliveries"].as_array().expect("deliveries").clone()
}

fn at(v: &Value) -> time::OffsetDateTime {
    let s = v.as_str().expect("timestamp");
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

/// A completed job's `job.completed` is signed; a 500 is retried after the backoff, under the
/// same delivery id; the attempts show on the job.
#[tokio::test]
async fn signed_delivery_is_retried_after_a_500_with_the_same_id() {
    let receiver = Receiver::start(SECRET, &[500]).await;
    let app = open_app(&[]).await;
    let job = app.submit(hooked_job(&receiver.url())).await;
    app.register("w1").await;
    let a = app.claim("w1", 1).await;
    app.report(&a[0], "Completed").await;

    let first = receiver.wait_for(1).await;
    assert_eq!(first[0].answered, 500);
    // Pending, due one backoff (SPLAI_WEBHOOK_RETRY_BASE_MS, 10 s) after the attempt.
    let d = &deliveries(&app, &job).await[0];
    assert_eq!(d["state"], "pending", "{d}");
    assert_eq!(d["attempts"], 1);
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(
        at(&d["next_attempt_at"]) - at(&log[0]["at"]),
        time::Duration::seconds(10)
    );

    app.clock.advance(Duration::from_secs(11));
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for r in &got {
        assert!(r.verified, "signature checks out: {r:?}");
        assert_eq!(r.event, "job.completed");
        assert_eq!(r.body["type"], "job.completed");
        assert_eq!(
            r.body["id"],
            r.delivery.as_str(),
            "body id is the delivery id"
        );
        assert_eq!(r.body["data"]["job"]["job_id"], job.as_str());
        assert_eq!(r.body["data"]["job"]["status"], "Completed");
    }
    assert_eq!(got[0].delivery, got[1].delivery, "a retry keeps its id");
    assert_eq!(got[1].answered, 200);
    eventually(|| async { deliveries(&app, &job).await[0]["state"] == "delivered" }).await;
    let d = &deliveries(&app, &job).await[0];
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["next_attempt_at"], Value::Null);
    let codes: Vec<&Value> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes, vec![&json!(500), &json!(200)]);
    app.shutdown().await.unwrap();
}

/// After `SPLAI_WEBHOOK_MAX_ATTEMPTS` failures the delivery is failed and not sent again;
/// connection errors count as failures too, with the error on the attempt.
#[tokio::test]
async fn delivery_fails_after_the_last_attempt() {
    let receiver = Receiver::start(SECRET, &[503, 503, 503]).await;
    let app = open_app(&[("SPLAI_WEBHOOK_MAX_ATTEMPTS", "2")]).await;
    let job = app.submit(hooked_job(&receiver.url())).await;
    // Nothing listens on this port (bound, then closed): every attempt is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let unreachable = app
        .submit(hooked_job(&format!("http://{closed}/hook")))
        .await;
    let (status, _) = app.delete(&format!("/v1/jobs/{job}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.delete(&format!("/v1/jobs/{unreachable}")).await;
    assert_eq!(status, StatusCode::OK);

    receiver.wait_for(1).await;
    app.clock.advance(Duration::from_secs(11));
    receiver.wait_for(2).await;
    for id in [&job, &unreachable] {
        eventually(|| async { deliveries(&app, id).await[0]["state"] == "failed" }).await;
    }
    let d = &deliveries(&app, &job).await[0];
    assert_eq!(d["event"], "job.canceled");
    assert_eq!(d["attempts"], 2);
    let d = &deliveries(&app, &unreachable).await[0];
    let log = d["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["status_code"], Value::Null);
    assert!(
        log[0]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{d}"
    );
    app.shutdown().await.unwrap();
}

/// With the allow flag off, loopback, link-local and private destinations are refused at
/// submit with 400 and nothing is written; the receiver never hears a thing.
#[tokio::test]
async fn refused_destination_is_rejected_at_submit_and_nothing_is_sent() {
    let receiver = Receiver::start(SECRET, &[]).await;
    let app = spawn_app_with(&[("SPLAI_WEBHOOK_SECRET", SECRET)]).await;
    let port = receiver.addr.port();
    for url in [
        receiver.url(),
        format!("http://localhost:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.1.2.3/hook".to_owned(),
        "http://[::1]/hook".to_owned(),
    ] {
        let (status, body) = app.post("/v1/jobs", &hooked_job(&url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("webhook_url") && msg.contains("SPLAI_WEBHOOK_ALLOW_PRIVATE"),
            "{msg}"
        );
    }
    // In a batch the job is rejected on its own.
    let batch = json!({ "jobs": [hooked_job(&receiver.url())] });
    let (status, body) = app.post("/v1/jobs/batch", &batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rejected"], 1, "{body}");
    let (_, list) = app.get("/v1/jobs").await;
    assert_eq!(list["jobs"], json!([]), "nothing written");
    assert!(receiver.got().is_empty());
    app.shutdown().await.unwrap();
}

/// Without a secret for the job's tenant, a webhook is refused at submit: nothing unsigned is
/// ever sent.
#[tokio::test]
async fn webhook_without_a_signing_secret_is_rejected() {
    let app = spawn_app_with(&[("SPLAI_WEBHOOK_ALLOW_PRIVATE", "true")]).await;
    let (status, body) = app
        .post("/v1/jobs", &hooked_job("https://hooks.example.com/x"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("SPLAI_WEBHOOK_SECRET"),
        "{body}"
    );
    app.shutdown().await.unwrap();
}

/// A delivery still pending when the server stops is sent by the next server on the same
/// database, under the same id, signed with the tenant's own secret.
#[tokio::test]
async fn pending_delivery_is_delivered_after_a_restart() {
    let receiver = Receiver::start("whsec-acme", &[500]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let vars = [
        ("SPLAI_SQLITE_PATH", db.to_str().unwrap()),
        ("SPLAI_WEBHOOK_TENANT_SECRETS", "acme=whsec-acme"),
    ];
    let first = open_app(&vars).await;
    let mut body = hooked_job(&receiver.url());
    body["tenant"] = json!("acme");
    let job = first.submit(body).await;
    let (status, _) = first.delete(&format!("/v1/jobs/{job}")).await;
    assert_eq!(status, StatusCode::OK);
    receiver.wait_for(1).await;
    eventually(|| async { deliveries(&first, &job).await[0]["attempts"] == 1 }).await;
    first.shutdown().await.unwrap();

    let second = open_app(&vars).await;
    assert_eq!(deliveries(&second, &job).await[0]["state"], "pending");
    second.clock.advance(Duration::from_secs(11));
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].delivery, got[1].delivery);
    assert!(got.iter().all(|r| r.verified), "{got:?}");
    assert_eq!(got[1].event, "job.canceled");
    eventually(|| async { deliveries(&second, &job).await[0]["state"] == "delivered" }).await;
    second.shutdown().await.unwrap();
}

/// A job that asks for task events in `metadata.webhook_events` gets one per finished task
/// beside its job event; an unknown event name is refused at submit.
#[tokio::test]
async fn task_events_are_sent_when_the_job_asks() {
    let receiver = Receiver::start(SECRET, &[]).await;
    let app = open_app(&[]).await;
    let mut body = dag(&[("a", &[]), ("b", &["a"])]);
    body["webhook_url"] = json!(receiver.url());
    body["metadata"] = json!({ "webhook_events": ["task.completed"] });
    let job = app.submit(body.clone()).await;
    app.register("w1").await;
    for _ in 0..2 {
        let a = app.claim("w1", 1).await;
        app.report(&a[0], "Completed").await;
    }
    let got = receiver.wait_for(3).await;
    let mut seen: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            assert!(r.verified, "{r:?}");
            assert_eq!(r.body["type"], r.event.as_str());
            let task = r.body["data"]["task"]["task_id"].as_str().unwrap_or("-");
            (r.event.clone(), task.to_owned())
        })
        .collect();
    seen.sort();
    let want = [
        ("job.completed", "-"),
        ("task.completed", "a"),
        ("task.completed", "b"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(e, t)| ((*e).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(seen, want);
    eventually(|| async { deliveries(&app, &job).await.len() == 3 }).await;

    body["metadata"] = json!({ "webhook_events": ["task.started"] });
    let (status, resp) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains("webhook_events"),
        "{resp}"
    );
    app.shutdown().await.unwrap();
}
