//! The retention contract every store passes: `prune_finished` deletes terminal jobs that
//! finished before the cut-off, oldest first and at most `limit`, with their tasks,
//! idempotency keys, streamed chunks, webhook deliveries and outbox entries; it keeps open
//! jobs, jobs finished since, and jobs whose webhook is still to be delivered; a second pass
//! finds nothing more.

use crate::clock::from_millis;
use crate::domain::{
    IdempotencyKey, JobId, LeaseId, Status, TaskRef, TenantId, Timestamp, WebhookAttempt,
};
use crate::engine::TaskDefaults;
use crate::engine::rules::{self, Effects};
use crate::store::{
    AttemptOutcome, DispatchOutbox, IdempotencyClaim, JobStore, QueueWrites, TaskFilter,
    WebhookOutbox,
};

/// 2026-01-01T00:00:00Z plus `ms`.
fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

/// One day, in ms: the contract's jobs finish on day 1 and the cut-off is day 2.
const DAY: i64 = 86_400_000;

/// What a contract store offers: jobs, their deliveries and the outbox their entries pass.
pub trait RetentionStore: JobStore + WebhookOutbox + DispatchOutbox {}
impl<S: JobStore + WebhookOutbox + DispatchOutbox + ?Sized> RetentionStore for S {}

/// Writes a one-task job at `at(0)` with its ready entry, an idempotency key and
/// `webhook_url` if given.
async fn a_job<S: RetentionStore + ?Sized>(store: &S, webhook_url: Option<&str>) -> JobId {
    let mut new = super::a_single_task_job();
    new.webhook_url = webhook_url.map(str::to_owned);
    let specs = new.tasks.clone().unwrap_or_default();
    let id = JobId::generate();
    let defaults = TaskDefaults {
        max_retries: 1,
        timeout_sec: 60,
    };
    let tenant = TenantId::parse("acme").expect("tenant");
    let record = rules::build_record(id.clone(), tenant.clone(), &new, specs, defaults, at(0));
    let ready = rules::ready_entries(&record, at(0));
    let claim = IdempotencyClaim {
        tenant,
        key: key_of(&id),
        request_hash: "hash".into(),
    };
    store
        .create_job(&record, &ready, Some(&claim))
        .await
        .expect("create");
    id
}

fn key_of(id: &JobId) -> IdempotencyKey {
    IdempotencyKey::parse(format!("key-{id}")).expect("key")
}

/// Ends `id` at `at(ms)` as `status` (every task too), as a report or cancel would.
async fn finish<S: RetentionStore + ?Sized>(store: &S, id: &JobId, status: Status, ms: i64) {
    store
        .update_jobs(std::slice::from_ref(id), &mut |r| {
            if status == Status::Canceled {
                rules::cancel(r, at(ms), &mut Effects::default());
                return QueueWrites::default();
            }
            for t in &mut r.tasks {
                t.status = status;
                t.finished_at = Some(at(ms));
                t.updated_at = at(ms);
            }
            r.job.status = status;
            r.job.updated_at = at(ms);
            r.job.finished_at = Some(at(ms));
            QueueWrites::default()
        })
        .await
        .expect("finish");
}

/// Starts `id`'s task on a lease at `at(ms)` and streams two chunks under it.
async fn run_with_chunks<S: RetentionStore + ?Sized>(store: &S, id: &JobId, ms: i64) -> TaskRef {
    let lease_id = LeaseId::parse("lease-prune").expect("lease");
    let mut task = None;
    store
        .update_jobs(std::slice::from_ref(id), &mut |r| {
            let entry = rules::ready_entries(r, at(ms)).remove(0);
            task = Some(TaskRef {
                job_id: entry.job_id.clone(),
                task_id: entry.task_id.clone(),
            });
            let lease = crate::domain::Lease {
                entry,
                lease_id: lease_id.clone(),
                worker_id: None,
                expires_at: at(ms + 60_000),
            };
            assert!(rules::start(r, &lease, at(ms)));
            QueueWrites::default()
        })
        .await
        .expect("start");
    let task = task.expect("a ready task");
    let texts = vec!["hel".to_owned(), "lo".to_owned()];
    assert!(
        store
            .append_chunks(&task, &lease_id, 0, &texts)
            .await
            .unwrap()
    );
    task
}

/// Whether anything of `id` is left in the store.
async fn traces_of<S: RetentionStore + ?Sized>(
    store: &S,
    id: &JobId,
    task: &TaskRef,
) -> Vec<&'static str> {
    let tenant = TenantId::parse("acme").expect("tenant");
    let mut left = Vec::new();
    if store.load_job(id).await.unwrap().is_some() {
        left.push("job");
    }
    if store.get_job(id).await.unwrap().is_some() {
        left.push("job row");
    }
    if store.list_tasks(id, &TaskFilter::default()).await.is_ok() {
        left.push("tasks");
    }
    if store
        .find_idempotency(&tenant, &key_of(id))
        .await
        .unwrap()
        .is_some()
    {
        left.push("idempotency key");
    }
    if !store.chunks_after(task, 0, 10).await.unwrap().is_empty() {
        left.push("chunks");
    }
    if !store.job_webhooks(id).await.unwrap().is_empty() {
        left.push("webhook deliveries");
    }
    let outbox = store.pending_dispatch(1_000).await.unwrap();
    if outbox.iter().any(|(_, e)| &e.job_id == id) {
        left.push("outbox entries");
    }
    left
}

fn task_of(id: &JobId) -> TaskRef {
    TaskRef {
        job_id: id.clone(),
        task_id: crate::domain::TaskId::parse("only").expect("task id"),
    }
}

/// Old terminal jobs (completed, failed, canceled after streaming, delivered webhook) go
/// with every row of theirs; the ids returned are those jobs.
pub async fn prunes_old_terminal_jobs_with_their_rows<S: RetentionStore + ?Sized>(store: &S) {
    let completed = a_job(store, None).await;
    finish(store, &completed, Status::Completed, DAY).await;
    let failed = a_job(store, None).await;
    finish(store, &failed, Status::Failed, DAY).await;
    let streamed = a_job(store, None).await;
    let streamed_task = run_with_chunks(store, &streamed, 1_000).await;
    finish(store, &streamed, Status::Canceled, DAY).await;
    let hooked = a_job(store, Some("https://hooks.example.test/splai")).await;
    finish(store, &hooked, Status::Canceled, DAY).await;
    let claimed = store
        .claim_webhooks(at(DAY), at(DAY + 30_000), "t", 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let sent = WebhookAttempt {
        at: at(DAY + 1),
        status_code: Some(200),
        error: None,
    };
    let recorded = store
        .record_webhook_attempt(
            &claimed[0].delivery_id,
            "t",
            &sent,
            AttemptOutcome::Delivered,
        )
        .await
        .unwrap();
    assert!(recorded);
    // Before pruning, every kind of row is there to be deleted.
    assert_eq!(
        traces_of(store, &streamed, &streamed_task).await,
        [
            "job",
            "job row",
            "tasks",
            "idempotency key",
            "chunks",
            "outbox entries"
        ]
    );
    assert!(
        traces_of(store, &hooked, &task_of(&hooked))
            .await
            .contains(&"webhook deliveries")
    );

    let mut pruned = store.prune_finished(at(2 * DAY), 100).await.unwrap();

    pruned.sort();
    let mut expected = vec![
        completed.clone(),
        failed.clone(),
        streamed.clone(),
        hooked.clone(),
    ];
    expected.sort();
    assert_eq!(pruned, expected);
    for id in [&completed, &failed, &hooked] {
        assert_eq!(
            traces_of(store, id, &task_of(id)).await,
            Vec::<&str>::new(),
            "{id}"
        );
    }
    assert_eq!(
        traces_of(store, &streamed, &streamed_task).await,
        Vec::<&str>::new()
    );
}

/// Queued and running jobs, jobs finished at or after the cut-off, and a job whose webhook
/// is still pending all stay, whole.
pub async fn keeps_open_recent_and_undelivered_jobs<S: RetentionStore + ?Sized>(store: &S) {
    let queued = a_job(store, None).await;
    let running = a_job(store, None).await;
    run_with_chunks(store, &running, 1_000).await;
    let recent = a_job(store, None).await;
    finish(store, &recent, Status::Completed, 2 * DAY).await;
    let undelivered = a_job(store, Some("https://hooks.example.test/splai")).await;
    finish(store, &undelivered, Status::Canceled, DAY).await;

    let pruned = store.prune_finished(at(2 * DAY), 100).await.unwrap();

    assert_eq!(pruned, Vec::<JobId>::new());
    for (id, status) in [
        (&queued, Status::Queued),
        (&running, Status::Running),
        (&recent, Status::Completed),
        (&undelivered, Status::Canceled),
    ] {
        let job = store.get_job(id).await.unwrap().expect("kept");
        assert_eq!(job.status, status, "{id}");
        let tenant = TenantId::parse("acme").expect("tenant");
        assert!(
            store
                .find_idempotency(&tenant, &key_of(id))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(store.job_webhooks(&undelivered).await.unwrap().len(), 1);
    assert_eq!(
        store
            .load_job(&running)
            .await
            .unwrap()
            .expect("kept")
            .tasks
            .len(),
        1
    );
}

/// At most `limit` jobs go per call, the oldest finished first; calling again takes the next
/// ones and, once none are left, does nothing.
pub async fn honours_the_limit_and_repeats_harmlessly<S: RetentionStore + ?Sized>(store: &S) {
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = a_job(store, None).await;
        // Finished in reverse order of creation: age, not creation, decides.
        finish(store, &id, Status::Completed, DAY - i * 1_000).await;
        ids.push(id);
    }

    let first = store.prune_finished(at(2 * DAY), 2).await.unwrap();
    let second = store.prune_finished(at(2 * DAY), 2).await.unwrap();
    let third = store.prune_finished(at(2 * DAY), 2).await.unwrap();

    assert_eq!(first, vec![ids[2].clone(), ids[1].clone()]);
    assert_eq!(second, vec![ids[0].clone()]);
    assert_eq!(third, Vec::<JobId>::new());
    for id in &ids {
        assert!(store.get_job(id).await.unwrap().is_none(), "{id}");
    }
}
