//! SQS behind the store's outbox (`SPLAI_QUEUE=sqs`), against the AWS emulator: the engine
//! suite, and the lease cases in real time, on memory, SQLite, Postgres and DynamoDB state.
//!
//! SQS leases and backoffs run out in real time, not on the harness clock, so the suite cases
//! that move the clock past a lease or a backoff and expect the queue to follow
//! (`failed_attempt_is_retried_after_backoff`, `expired_lease_is_requeued_for_another_worker`,
//! `lease_expiry_on_last_attempt_dead_letters`, `streamed_chunks_follow_the_current_lease`)
//! are replaced here by real-time versions on a lease of a second or a few
//! (`real_time_cases!`), run on SQLite, Postgres and DynamoDB state; the two that lose
//! entries through `discard` (`lost_queue_entry_is_reconciled`, `lost_lease_is_reconciled`)
//! do not apply, since SQS cannot drop a message by task (see `queue/sqs.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use splai_shared::aws::AwsSettings;
use splai_shared::backends;
use splai_shared::domain::{Status, TaskRef};
use splai_shared::engine::{Backends, EngineConfig};
use splai_shared::queue::LeaseQueue;
use splai_shared::queue::sqs::SqsLeaseQueue;
use splai_shared::store::{Dispatch, TaskFilter};
use splai_shared::testing::aws::TestAws;
use splai_shared::testing::{Harness, a_retryable_job, a_single_task_job, report_for};

/// Fresh queues of this test's own.
async fn test_queue(test: &str) -> Option<SqsLeaseQueue> {
    let aws = TestAws::find(test).await?;
    let settings = AwsSettings {
        sqs_queue_prefix: TestAws::unique("splai"),
        create_resources: true,
        ..AwsSettings::default()
    };
    Some(
        SqsLeaseQueue::open(&aws.sdk, &settings)
            .await
            .expect("create the test queues"),
    )
}

/// SQLite state whose outbox relays to `queue`.
#[cfg(feature = "sqlite")]
async fn sqlite_with(queue: Arc<dyn LeaseQueue>, tune: impl FnOnce(&mut EngineConfig)) -> Harness {
    use splai_shared::store::sqlite::{SqliteDb, SqliteStore};
    let dir = tempfile::tempdir().expect("temp dir");
    let db = SqliteDb::open(&dir.path().join("splai.db"))
        .await
        .expect("open sqlite");
    let store = Arc::new(SqliteStore::new(db, Dispatch::Outbox));
    let b = Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store.clone(),
        webhooks: store.clone(),
        locks: store,
        queue,
        audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
    };
    Harness::with_config(b, Some(Box::new(dir)), tune)
}

/// Memory state relayed to SQS.
pub async fn memory_sqs() -> Option<Harness> {
    let mut b = backends::memory();
    b.queue = Arc::new(test_queue("conformance memory_sqs").await?);
    Some(Harness::new(b, None))
}

/// SQLite state relayed to SQS.
#[cfg(feature = "sqlite")]
pub async fn sqlite_sqs() -> Option<Harness> {
    let q = test_queue("conformance sqlite_sqs").await?;
    Some(sqlite_with(Arc::new(q), |_| {}).await)
}

/// Postgres state relayed to SQS.
#[cfg(feature = "postgres")]
pub async fn postgres_sqs() -> Option<Harness> {
    let q = test_queue("conformance postgres_sqs").await?;
    postgres_with("conformance postgres_sqs", Arc::new(q), |_| {}).await
}

/// Postgres state (a fresh database) whose outbox relays to `queue`.
#[cfg(feature = "postgres")]
async fn postgres_with(
    test: &str,
    queue: Arc<dyn LeaseQueue>,
    tune: impl FnOnce(&mut EngineConfig),
) -> Option<Harness> {
    use splai_shared::store::postgres::PostgresStore;
    use splai_shared::testing::postgres::TestDb;
    let t = TestDb::create(test).await?;
    let store = Arc::new(PostgresStore::new(t.db.clone(), Dispatch::Outbox));
    let b = Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store.clone(),
        webhooks: store.clone(),
        locks: store,
        queue,
        audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
    };
    Some(Harness::with_config(b, Some(Box::new(t)), tune))
}

/// DynamoDB state relayed to SQS: the all-AWS deployment.
pub async fn dynamodb_sqs() -> Option<Harness> {
    let q = test_queue("conformance dynamodb_sqs").await?;
    dynamodb_with("conformance dynamodb_sqs", Arc::new(q), |_| {}).await
}

/// DynamoDB state (a fresh table) whose outbox relays to `queue`.
async fn dynamodb_with(
    test: &str,
    queue: Arc<dyn LeaseQueue>,
    tune: impl FnOnce(&mut EngineConfig),
) -> Option<Harness> {
    use splai_shared::store::dynamodb::{DynamoAuditLog, DynamoDb, DynamoStore};
    let aws = TestAws::find(test).await?;
    let db = DynamoDb::open(&aws.sdk, &TestAws::unique("splai"), true)
        .await
        .expect("create the table");
    let store = Arc::new(DynamoStore::new(db.clone()));
    let b = Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store.clone(),
        webhooks: store.clone(),
        locks: store,
        queue,
        audit: Arc::new(DynamoAuditLog::new(db)),
    };
    Some(Harness::with_config(b, None, tune))
}

/// The suite's cases that hold on SQS as they are (the module docs say which are left out).
macro_rules! sqs_suite {
    ($setup:path) => {
        splai_shared::engine_suite!(@cases $setup;
            dag_runs_in_dependency_order_passing_outputs,
            exhausted_task_is_dead_lettered_and_fails_its_job,
            heartbeat_keeps_a_lease_alive,
            duplicate_report_changes_nothing_twice,
            cancel_stops_queued_tasks,
            cancel_reaches_running_worker_on_heartbeat,
            cancel_of_finished_job_conflicts_and_repeat_cancel_is_accepted,
            retry_reruns_unfinished_tasks_of_failed_job,
            requeued_dead_letter_revives_its_job,
            claims_follow_priority_classes_then_fifo,
            claims_honour_hard_constraints,
            idempotent_submit_returns_the_first_job,
            reports_for_many_jobs_apply_in_one_call,
            job_listing_filters_and_pages,
            task_listing_filters_and_pages,
            claims_are_batched_up_to_max,
            handed_back_lease_is_claimable_at_once_uncounted,
            bulk_submit_accepts_or_rejects_each_job_on_its_own,
            any_model_worker_claims_every_model,
        );
    };
}

mod memory_sqs_suite {
    sqs_suite!(super::memory_sqs);
}

mod dynamodb_sqs_suite {
    sqs_suite!(super::dynamodb_sqs);
}

#[cfg(feature = "sqlite")]
mod sqlite_sqs_suite {
    sqs_suite!(super::sqlite_sqs);
}

#[cfg(feature = "postgres")]
mod postgres_sqs_suite {
    sqs_suite!(super::postgres_sqs);
}

/// Engine settings for the real-time cases: a lease of `lease`, backoffs of one second.
fn real_time(lease: Duration) -> impl FnOnce(&mut EngineConfig) {
    move |c| {
        c.lease = lease;
        c.retry_base = Duration::from_secs(1);
        c.retry_max = Duration::from_secs(1);
    }
}

/// A harness on SQLite + SQS with a real-time lease, and the queue itself (to count requests).
#[cfg(feature = "sqlite")]
async fn timed_sqlite(test: &str, lease: Duration) -> Option<(Harness, SqsLeaseQueue)> {
    let q = test_queue(test).await?;
    let h = sqlite_with(Arc::new(q.clone()), real_time(lease)).await;
    Some((h, q))
}

/// The same on Postgres + SQS.
#[cfg(feature = "postgres")]
async fn timed_postgres(test: &str, lease: Duration) -> Option<(Harness, SqsLeaseQueue)> {
    let q = test_queue(test).await?;
    let h = postgres_with(test, Arc::new(q.clone()), real_time(lease)).await?;
    Some((h, q))
}

/// The same on DynamoDB + SQS.
async fn timed_dynamodb(test: &str, lease: Duration) -> Option<(Harness, SqsLeaseQueue)> {
    let q = test_queue(test).await?;
    let h = dynamodb_with(test, Arc::new(q.clone()), real_time(lease)).await?;
    Some((h, q))
}

/// Lets `d` pass for both SQS (real time) and the engine (its manual clock).
async fn pass(h: &Harness, d: Duration) {
    tokio::time::sleep(d).await;
    h.advance(d);
}

/// The real-time versions of the suite's lease, backoff, dead-letter and streaming cases, as
/// tests on the state backend `$timed` builds.
macro_rules! real_time_cases {
    ($timed:path) => {
        real_time_cases!(@case $timed, 1, expired_lease_is_redelivered_and_completed_once);
        real_time_cases!(@case $timed, 5, retry_waits_out_its_backoff);
        real_time_cases!(@case $timed, 1, poison_task_reaches_the_dead_letter_queue_and_is_requeued);
        real_time_cases!(@case $timed, 1, streamed_chunks_follow_the_redelivered_lease);
    };
    (@case $timed:path, $lease_secs:literal, $case:ident) => {
        #[tokio::test]
        async fn $case() {
            let lease = std::time::Duration::from_secs($lease_secs);
            if let Some((h, q)) = $timed(stringify!($case), lease).await {
                super::$case(h, q).await;
            }
        }
    };
}

#[cfg(feature = "sqlite")]
mod sqlite_sqs_real_time {
    real_time_cases!(super::timed_sqlite);
}

#[cfg(feature = "postgres")]
mod postgres_sqs_real_time {
    real_time_cases!(super::timed_postgres);
}

mod dynamodb_sqs_real_time {
    real_time_cases!(super::timed_dynamodb);
}

/// A worker that dies loses its lease when the visibility timeout runs out: SQS delivers the
/// task again, another worker takes it over as attempt 2 and completes it, and the first
/// worker's late report changes nothing: the task completes exactly once.
async fn expired_lease_is_redelivered_and_completed_once(h: Harness, _q: SqsLeaseQueue) {
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let lost = h.claim(&w1, 1).await.remove(0);
    assert!(h.claim(&w2, 1).await.is_empty(), "leased: not visible");

    pass(&h, Duration::from_millis(1500)).await;
    let taken = h.claim(&w2, 1).await;
    assert_eq!(taken.len(), 1, "redelivered after the lease ran out");
    assert_eq!(taken[0].attempt, 2);
    assert_eq!(h.complete(&lost).await.outcome, "stale");
    assert_eq!(h.complete(&taken[0]).await.outcome, "completed");
    assert_eq!(h.complete(&taken[0]).await.outcome, "duplicate");
    let tasks = h
        .engine
        .list_tasks(&job, &TaskFilter::default())
        .await
        .unwrap()
        .tasks;
    assert_eq!(
        (
            tasks[0].status,
            tasks[0].worker_id.as_ref(),
            tasks[0].attempt
        ),
        (Status::Completed, Some(&w2), 2)
    );
    pass(&h, Duration::from_millis(1500)).await;
    assert!(
        h.claim(&w1, 10).await.is_empty(),
        "acked: never delivered again"
    );
}

/// A retryable failure makes the message invisible for the backoff; it comes back after it,
/// counted as attempt 2.
async fn retry_waits_out_its_backoff(h: Harness, _q: SqsLeaseQueue) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_retryable_job(2)).await.unwrap().job_id;
    let first = h.claim(&w, 1).await.remove(0);
    assert_eq!(h.fail(&first, true).await.outcome, "retrying");
    assert!(h.claim(&w, 1).await.is_empty(), "backoff holds it back");
    pass(&h, Duration::from_millis(1500)).await;
    let second = h.claim(&w, 1).await.remove(0);
    assert_eq!(second.attempt, 2);
    h.complete(&second).await;
    assert_eq!(h.engine.job(&job).await.unwrap().status, Status::Completed);
}

/// A poison task whose lease runs out on every attempt reaches the SQS dead-letter queue; the
/// reconciliation fails its job; requeuing the dead letter through the engine revives the job,
/// which then completes.
async fn poison_task_reaches_the_dead_letter_queue_and_is_requeued(h: Harness, q: SqsLeaseQueue) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_retryable_job(1)).await.unwrap().job_id;
    for attempt in 1..=2 {
        let got = h.claim(&w, 1).await;
        assert_eq!(got.len(), 1, "attempt {attempt}");
        assert_eq!(got[0].attempt, attempt);
        pass(&h, Duration::from_millis(1500)).await;
    }
    assert!(h.claim(&w, 1).await.is_empty(), "out of attempts");
    let dead = h.engine.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].entry.job_id, job);
    assert!(
        dead[0].reason.contains("lease expired"),
        "{}",
        dead[0].reason
    );
    assert_eq!(q.depth().await.unwrap().dead, 1);

    h.advance(h.engine.config().reconcile_after + Duration::from_secs(1));
    assert_eq!(h.engine.sweep().await.unwrap().reconciled, 1);
    assert_eq!(h.engine.job(&job).await.unwrap().status, Status::Failed);

    let refs: Vec<TaskRef> = dead.iter().map(|d| d.entry.task_ref()).collect();
    assert_eq!(h.engine.requeue_dead_letters(&refs).await.unwrap(), refs);
    assert!(h.engine.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(h.engine.job(&job).await.unwrap().status, Status::Queued);
    let again = h.claim(&w, 1).await.remove(0);
    assert_eq!(again.attempt, 1, "attempts start over");
    assert_eq!(h.complete(&again).await.outcome, "completed");
    assert_eq!(h.engine.job(&job).await.unwrap().status, Status::Completed);
}

/// A task's streamed chunks belong to its lease: once the first worker's lease ran out and SQS
/// delivered the task again, the first worker's late chunks are refused and the new attempt's
/// are kept apart; none are taken after completion.
async fn streamed_chunks_follow_the_redelivered_lease(h: Harness, _q: SqsLeaseQueue) {
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    h.engine.submit(a_single_task_job()).await.unwrap();
    let first = h.claim(&w1, 1).await.remove(0);
    let task = TaskRef {
        job_id: first.job_id.clone(),
        task_id: first.task_id.clone(),
    };
    let texts = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let e = &h.engine;
    assert!(
        e.append_chunks(&task, &first.lease_id, 0, &texts(&["He", "llo"]))
            .await
            .unwrap()
    );
    pass(&h, Duration::from_millis(1500)).await;
    let second = h.claim(&w2, 1).await.remove(0);
    assert_eq!(second.attempt, 2);
    assert!(
        !e.append_chunks(&task, &first.lease_id, 2, &texts(&["late"]))
            .await
            .unwrap()
    );
    assert!(
        e.append_chunks(&task, &second.lease_id, 0, &texts(&["Hi"]))
            .await
            .unwrap()
    );
    let all = e.chunks_after(&task, 0, 100).await.unwrap();
    let got: Vec<_> = all.iter().map(|c| (&c.lease_id, c.text.as_str())).collect();
    assert_eq!(
        got,
        [
            (&first.lease_id, "He"),
            (&first.lease_id, "llo"),
            (&second.lease_id, "Hi")
        ]
    );
    h.complete(&second).await;
    assert!(
        !e.append_chunks(&task, &second.lease_id, 1, &texts(&["after"]))
            .await
            .unwrap()
    );
}

/// An idle claim long-polls SQS (a handful of requests, not one per poll interval), and a task
/// sent while it waits is handed out at once.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqs_idle_claim_long_polls_and_wakes_for_new_work() {
    let Some((h, q)) = timed_sqlite("sqs_long_poll", Duration::from_secs(10)).await else {
        return;
    };
    let w = h.cpu_worker("w1").await;
    let before = q.requests();
    let started = Instant::now();
    assert!(
        h.engine
            .assign(&w, 1, Duration::from_secs(3))
            .await
            .unwrap()
            .is_empty()
    );
    let idle = q.requests() - before;
    assert!(started.elapsed() >= Duration::from_millis(2900));
    // Three quick receives, three long polls; a busy loop at the 10 ms poll interval would
    // have made hundreds.
    assert!(idle <= 9, "{idle} requests for one idle 3 s claim");

    let engine = h.engine.clone();
    let w2 = w.clone();
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let got = engine
            .assign(&w2, 1, Duration::from_secs(15))
            .await
            .unwrap();
        (got, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let (got, waited) = poll.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].job_id, job);
    assert!(
        waited < Duration::from_secs(5),
        "woken by the long poll: {waited:?}"
    );
}

/// Figures: SQS requests per task for a batch of jobs run end to end through the engine
/// (bulk submit, claims of 10, one report call per claim), and tasks/s on the emulator.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqs_requests_per_task_stay_within_budget() {
    let Some((h, q)) = timed_sqlite("sqs_cost", Duration::from_secs(30)).await else {
        return;
    };
    const JOBS: usize = 100;
    let w = h.cpu_worker("w1").await;
    let before = q.requests();
    let started = Instant::now();
    let jobs: Vec<_> = (0..JOBS).map(|_| a_single_task_job()).collect();
    for s in h.engine.submit_many(jobs).await.unwrap() {
        s.unwrap();
    }
    let mut done = 0;
    while done < JOBS {
        let got = h.claim(&w, 10).await;
        assert!(!got.is_empty(), "{done} of {JOBS} done, nothing claimable");
        let reports: Vec<_> = got
            .iter()
            .map(|a| {
                report_for(
                    a,
                    Status::Completed,
                    Some("artifact://x".into()),
                    None,
                    true,
                )
            })
            .collect();
        for r in h.engine.report(&reports).await.unwrap() {
            assert_eq!(r.outcome, "completed");
        }
        done += got.len();
    }
    let elapsed = started.elapsed();
    let per_task = (q.requests() - before) as f64 / JOBS as f64;
    eprintln!(
        "sqs figures: {JOBS} tasks, {per_task:.2} SQS requests per task, {:.0} tasks/s on the emulator",
        JOBS as f64 / elapsed.as_secs_f64()
    );
    assert!(per_task <= 3.0, "{per_task} requests per task");

    // Unbatched, for comparison: one submit, one claim of one and one report per task.
    const SINGLE: usize = 20;
    let before = q.requests();
    for _ in 0..SINGLE {
        h.engine.submit(a_single_task_job()).await.unwrap();
        let a = h.claim(&w, 1).await.remove(0);
        assert_eq!(h.complete(&a).await.outcome, "completed");
    }
    let single = (q.requests() - before) as f64 / SINGLE as f64;
    eprintln!("sqs figures: {single:.2} SQS requests per task one at a time");
}

/// Without `SPLAI_AWS_CREATE_RESOURCES` a missing queue fails start-up naming it.
#[tokio::test]
async fn sqs_missing_queue_fails_naming_it() {
    let Some(aws) = TestAws::find("sqs_missing_queue").await else {
        return;
    };
    let prefix = TestAws::unique("absent");
    let settings = AwsSettings {
        sqs_queue_prefix: prefix.clone(),
        ..AwsSettings::default()
    };
    let e = SqsLeaseQueue::open(&aws.sdk, &settings).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("`{prefix}-dead` does not exist")),
        "{msg}"
    );
    assert!(msg.contains("SPLAI_AWS_CREATE_RESOURCES"), "{msg}");
}
