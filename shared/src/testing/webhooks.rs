//! The webhook-outbox contract every store passes: a job reaching a terminal status with a
//! `webhook_url` gets exactly one delivery in the same write; deliveries are handed out only
//! when due and to one lease holder at a time; an attempt recorded under a lost lease changes
//! nothing; outcomes reschedule, finish or fail a delivery, and the job's log shows them all;
//! task events only for jobs that ask; two handles claiming at once never share a delivery.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock::from_millis;
use crate::domain::{
    DeliveryState, JobId, Status, TenantId, Timestamp, WebhookAttempt, WebhookDelivery,
};
use crate::engine::TaskDefaults;
use crate::engine::rules::{self, Effects};
use crate::store::{AttemptOutcome, JobStore, QueueWrites, WebhookOutbox};

/// 2026-01-01T00:00:00Z plus `ms`.
fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

const LEASE_MS: i64 = 30_000;

/// Writes a one-task job (with `webhook_url` if given) and returns its id.
async fn a_job<S: JobStore + ?Sized>(store: &S, webhook_url: Option<&str>) -> JobId {
    let mut new = super::a_single_task_job();
    new.webhook_url = webhook_url.map(str::to_owned);
    write(store, new).await
}

async fn write<S: JobStore + ?Sized>(store: &S, new: crate::domain::NewJob) -> JobId {
    let specs = new.tasks.clone().unwrap_or_default();
    let id = JobId::generate();
    let defaults = TaskDefaults {
        max_retries: 1,
        timeout_sec: 60,
    };
    let tenant = TenantId::parse("acme").expect("tenant");
    let record = rules::build_record(id.clone(), tenant, &new, specs, defaults, at(0));
    store.create_job(&record, &[], None).await.expect("create");
    id
}

/// Cancels `id` at `at(ms)` through `update_jobs`, as the engine does.
async fn cancel<S: JobStore + ?Sized>(store: &S, id: &JobId, ms: i64) {
    store
        .update_jobs(std::slice::from_ref(id), &mut |r| {
            rules::cancel(r, at(ms), &mut Effects::default());
            QueueWrites::default()
        })
        .await
        .expect("update");
}

async fn claim<S: WebhookOutbox + ?Sized>(
    store: &S,
    now_ms: i64,
    token: &str,
) -> Vec<WebhookDelivery> {
    store
        .claim_webhooks(at(now_ms), at(now_ms + LEASE_MS), token, 10)
        .await
        .expect("claim")
}

fn answered(ms: i64, code: u16) -> WebhookAttempt {
    WebhookAttempt {
        at: at(ms),
        status_code: Some(code),
        error: None,
    }
}

/// One delivery per terminal change, written with it; none for a job without a URL, none for
/// non-terminal changes, none for a change of an already terminal job.
pub async fn terminal_change_writes_one_delivery<S: JobStore + WebhookOutbox + ?Sized>(store: &S) {
    let hooked = a_job(store, Some("https://hooks.example.test/splai")).await;
    let plain = a_job(store, None).await;
    // A change that leaves the job open owes nothing.
    store
        .update_jobs(std::slice::from_ref(&hooked), &mut |r| {
            r.job.message = "still queued".into();
            QueueWrites::default()
        })
        .await
        .expect("update");
    assert!(store.job_webhooks(&hooked).await.unwrap().is_empty());

    cancel(store, &hooked, 1_000).await;
    cancel(store, &plain, 1_000).await;
    // Touching the terminal job again owes nothing more.
    cancel(store, &hooked, 2_000).await;

    let all = store.job_webhooks(&hooked).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let d = &all[0];
    assert_eq!(d.event, "job.canceled");
    assert_eq!(d.url, "https://hooks.example.test/splai");
    assert_eq!(d.tenant.as_str(), "acme");
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.next_attempt_at, Some(at(1_000)));
    assert!(store.job_webhooks(&plain).await.unwrap().is_empty());

    // The stored body is the event, whole, ready to sign.
    let claimed = claim(store, 1_000, "t1").await;
    assert_eq!(claimed.len(), 1);
    let body: Value = serde_json::from_str(&claimed[0].body).expect("JSON body");
    assert_eq!(body["id"], d.delivery_id.as_str());
    assert_eq!(body["type"], "job.canceled");
    assert_eq!(body["data"]["job"]["job_id"], hooked.as_str());
    assert_eq!(body["data"]["job"]["status"], Status::Canceled.as_str());
    assert!(body["created_at"].as_str().is_some_and(|s| !s.is_empty()));
}

/// Not due, not handed out; leased, not handed out again until the lease runs out; an attempt
/// under a lease another deliverer has since taken is refused.
pub async fn claims_are_leased_due_and_fenced<S: JobStore + WebhookOutbox + ?Sized>(store: &S) {
    let id = a_job(store, Some("https://hooks.example.test/a")).await;
    cancel(store, &id, 1_000).await;
    assert!(claim(store, 999, "early").await.is_empty(), "not due yet");

    let first = claim(store, 1_000, "first").await;
    assert_eq!(first.len(), 1);
    assert!(
        claim(store, 1_001, "second").await.is_empty(),
        "leased to first"
    );
    // The first deliverer stalls past its lease; another takes over.
    let second = claim(store, 1_000 + LEASE_MS, "second").await;
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].delivery_id, first[0].delivery_id);
    let late = store
        .record_webhook_attempt(
            &first[0].delivery_id,
            "first",
            &answered(40_000, 200),
            AttemptOutcome::Delivered,
        )
        .await
        .unwrap();
    assert!(!late, "the lost lease records nothing");
    let now = store
        .record_webhook_attempt(
            &second[0].delivery_id,
            "second",
            &answered(31_500, 500),
            AttemptOutcome::Retry(at(40_000)),
        )
        .await
        .unwrap();
    assert!(now);
    // Recording ends the lease: a second record under the same token is refused.
    let again = store
        .record_webhook_attempt(
            &second[0].delivery_id,
            "second",
            &answered(31_600, 200),
            AttemptOutcome::Delivered,
        )
        .await
        .unwrap();
    assert!(!again);
    let d = &store.job_webhooks(&id).await.unwrap()[0];
    assert_eq!(d.attempts, 1);
    assert_eq!(d.attempt_log, vec![answered(31_500, 500)]);
}

/// A retry waits for its time and keeps its id; delivered and failed deliveries are never
/// handed out again; the log keeps every attempt with its code or error.
pub async fn outcomes_end_or_reschedule_deliveries<S: JobStore + WebhookOutbox + ?Sized>(
    store: &S,
) {
    let ok = a_job(store, Some("https://hooks.example.test/ok")).await;
    let bad = a_job(store, Some("https://hooks.example.test/bad")).await;
    cancel(store, &ok, 0).await;
    cancel(store, &bad, 0).await;
    let both = claim(store, 0, "t").await;
    assert_eq!(both.len(), 2);
    let retry_at = at(5_000);
    for d in &both {
        let attempt = WebhookAttempt {
            at: at(10),
            status_code: None,
            error: Some("connection refused".into()),
        };
        let outcome = AttemptOutcome::Retry(retry_at);
        assert!(
            store
                .record_webhook_attempt(&d.delivery_id, "t", &attempt, outcome)
                .await
                .unwrap()
        );
    }
    assert!(claim(store, 4_999, "t2").await.is_empty(), "backing off");
    let retried = claim(store, 5_000, "t2").await;
    assert_eq!(retried.len(), 2);
    for d in &retried {
        assert_eq!(d.attempts, 1);
        let outcome = if d.job_id == ok {
            AttemptOutcome::Delivered
        } else {
            AttemptOutcome::Failed
        };
        let attempt = answered(5_010, if d.job_id == ok { 204 } else { 410 });
        assert!(
            store
                .record_webhook_attempt(&d.delivery_id, "t2", &attempt, outcome)
                .await
                .unwrap()
        );
    }
    let later = Duration::from_secs(3600).as_millis() as i64;
    assert!(claim(store, later, "t3").await.is_empty(), "all finished");

    let done = &store.job_webhooks(&ok).await.unwrap()[0];
    assert_eq!(done.state, DeliveryState::Delivered);
    assert_eq!(done.next_attempt_at, None);
    assert_eq!(done.attempts, 2);
    assert_eq!(
        done.attempt_log[0].error.as_deref(),
        Some("connection refused")
    );
    assert_eq!(done.attempt_log[1], answered(5_010, 204));
    let failed = &store.job_webhooks(&bad).await.unwrap()[0];
    assert_eq!(failed.state, DeliveryState::Failed);
    assert_eq!(failed.next_attempt_at, None);
    assert_eq!(failed.attempt_log[1].status_code, Some(410));
}

/// Sets task `task` of `id` to `status` through `update_jobs`, and the job to `job` if given.
async fn set<S: JobStore + ?Sized>(
    store: &S,
    id: &JobId,
    task: &str,
    status: Status,
    job: Option<Status>,
) {
    store
        .update_jobs(std::slice::from_ref(id), &mut |r| {
            for t in r.tasks.iter_mut().filter(|t| t.task_id.as_str() == task) {
                t.status = status;
            }
            if let Some(j) = job {
                r.job.status = j;
            }
            QueueWrites::default()
        })
        .await
        .expect("update");
}

/// Task events are written only for a job that asked for them in `metadata.webhook_events`,
/// only the ones it asked for, once per task, beside its job event.
pub async fn task_events_only_when_asked<S: JobStore + WebhookOutbox + ?Sized>(store: &S) {
    let two = || {
        let mut new = super::a_job_with(vec![super::a_task("a", &[]), super::a_task("b", &[])]);
        new.webhook_url = Some("https://hooks.example.test/tasks".into());
        new
    };
    let mut asking = two();
    asking.metadata.insert(
        crate::domain::WEBHOOK_EVENTS_KEY.into(),
        serde_json::json!(["task.failed"]),
    );
    let asking = write(store, asking).await;
    let quiet = write(store, two()).await;
    for id in [&asking, &quiet] {
        set(store, id, "a", Status::Completed, None).await;
        set(store, id, "b", Status::Failed, None).await;
        // Written again unchanged: owes nothing more.
        set(store, id, "b", Status::Failed, Some(Status::Failed)).await;
    }
    let events = |all: Vec<WebhookDelivery>| -> Vec<(String, Value)> {
        all.iter()
            .map(|d| {
                let body: Value = serde_json::from_str(&d.body).expect("JSON body");
                (d.event.clone(), body["data"]["task"]["task_id"].clone())
            })
            .collect()
    };
    let got = events(store.job_webhooks(&asking).await.unwrap());
    assert_eq!(
        got,
        vec![
            ("task.failed".to_owned(), Value::from("b")),
            ("job.failed".to_owned(), Value::Null),
        ]
    );
    let got = events(store.job_webhooks(&quiet).await.unwrap());
    assert_eq!(got, vec![("job.failed".to_owned(), Value::Null)]);
}

/// Two deliverers (two handles on one database, as two gateways hold) claiming at once never
/// get the same delivery: every delivery is handed out exactly once while leases last.
pub async fn concurrent_claims_hand_out_each_delivery_once<S>(a: Arc<S>, b: Arc<S>)
where
    S: JobStore + WebhookOutbox + ?Sized + 'static,
{
    const JOBS: usize = 24;
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let id = a_job(&*a, Some("https://hooks.example.test/race")).await;
        cancel(&*a, &id, 0).await;
        ids.push(id);
    }
    let mut handles = Vec::new();
    for n in 0..6 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let token = format!("claimer-{n}");
                let got = store
                    .claim_webhooks(at(0), at(LEASE_MS), &token, 3)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| d.delivery_id));
            }
        }));
    }
    let mut claimed = Vec::new();
    for h in handles {
        claimed.extend(h.await.expect("claimer"));
    }
    let total = claimed.len();
    claimed.sort();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "a delivery was handed out twice");
    assert_eq!(total, JOBS, "every due delivery was handed out");
}
