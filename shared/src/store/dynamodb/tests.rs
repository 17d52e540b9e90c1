//! Behaviour of the DynamoDB store on the AWS emulator (`crate::testing::aws`), one fresh
//! table per test; skipped with a printed reason when no emulator is reachable (failed under
//! `CI`). The shared contracts (audit, webhooks) run here too; the engine conformance suite
//! runs in `shared/tests/conformance`.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::domain::{
    Heartbeat, Requirements, TaskId, Worker, WorkerHealth, WorkerId, WorkerRegistration,
};
use crate::store::{IdempotencyClaim, QueueWrites, WorkerStore};
use crate::testing::aws::{SerialMoto, TestAws};
use crate::testing::records::{a_full_record, a_job, a_record, a_task, at, entry_for, job_id};

/// A fresh table on the emulator, or `None` (skipped) without one.
async fn table(test: &str) -> Option<DynamoDb> {
    let aws = TestAws::find(test).await?;
    let name = TestAws::unique("splai");
    Some(
        DynamoDb::open(&aws.sdk, &name, true)
            .await
            .expect("create the table"),
    )
}

pub(super) async fn store(test: &str) -> Option<DynamoStore> {
    Some(DynamoStore::new(table(test).await?))
}

async fn pending(store: &DynamoStore) -> Vec<QueueEntry> {
    store
        .pending_dispatch(1000)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e)
        .collect()
}

/// A record with optional fields set and awkward values reads back equal, whole and job-only.
#[tokio::test]
async fn job_record_round_trips_exactly() {
    let Some(store) = store("ddb job_record_round_trips_exactly").await else {
        return;
    };
    let mut record = a_full_record();
    // Beyond the shared record: an inline output, which DynamoDB keeps in the job's item.
    record.tasks[0].output = Some(crate::domain::InlineOutput::of(
        &json!({"text": "ok", "temperature": 0.7}),
    ));
    store.create_job(&record, &[], None).await.unwrap();
    assert_eq!(
        store.load_job(&record.job.job_id).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store.get_job(&record.job.job_id).await.unwrap(),
        Some(record.job)
    );
    assert_eq!(store.load_job(&job_id("job-nope")).await.unwrap(), None);
}

/// Ready entries go to the outbox in order; marking removes them, and an item whose entries
/// are all marked is deleted.
#[tokio::test]
async fn outbox_keeps_order_and_forgets_marked_entries() {
    let Some(store) = store("ddb outbox_keeps_order_and_forgets_marked_entries").await else {
        return;
    };
    let record = a_record("job-1", &["a", "b", "c"]);
    let mut ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
    ready[1].requirements = Requirements {
        gpu: true,
        backend: Some("vllm".into()),
        model: Some("m".into()),
        worker_id: Some(WorkerId::parse("w-9").unwrap()),
    };
    ready[1].not_before = at(77);
    store.create_job(&record, &ready, None).await.unwrap();
    let out = store.pending_dispatch(10).await.unwrap();
    assert_eq!(
        out.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        ready
    );
    assert!(out[0].0 < out[1].0 && out[1].0 < out[2].0);
    assert_eq!(store.pending_dispatch(1).await.unwrap(), out[..1]);
    store.mark_dispatched(&[out[1].0]).await.unwrap();
    assert_eq!(
        store.pending_dispatch(10).await.unwrap(),
        vec![out[0].clone(), out[2].clone()]
    );
    store.mark_dispatched(&[out[0].0, out[2].0]).await.unwrap();
    assert!(store.pending_dispatch(10).await.unwrap().is_empty());
    // Marking again (a relay that crashed before it heard back) is harmless.
    store.mark_dispatched(&[out[0].0]).await.unwrap();
    // A whole item marked at once goes in one step.
    let other = a_record("job-2", &["a", "b"]);
    let ready: Vec<_> = other.tasks.iter().map(entry_for).collect();
    store.create_job(&other, &ready, None).await.unwrap();
    let out = store.pending_dispatch(10).await.unwrap();
    assert_eq!(out.len(), 2);
    store.mark_dispatched(&[out[1].0, out[0].0]).await.unwrap();
    assert!(store.pending_dispatch(10).await.unwrap().is_empty());
}

/// A repeated idempotency key returns the first job and writes nothing at all.
#[tokio::test]
async fn idempotent_replay_writes_nothing() {
    let Some(store) = store("ddb idempotent_replay_writes_nothing").await else {
        return;
    };
    let claim = IdempotencyClaim {
        tenant: TenantId::parse("acme").unwrap(),
        key: IdempotencyKey::parse("k-1").unwrap(),
        request_hash: "h1".into(),
    };
    let first = a_record("job-1", &["a"]);
    let ready = vec![entry_for(&first.tasks[0])];
    let created = store.create_job(&first, &ready, Some(&claim)).await;
    assert_eq!(created.unwrap(), CreateOutcome::Created);
    let second = a_record("job-2", &["a"]);
    let again = IdempotencyClaim {
        request_hash: "h2".into(),
        ..claim.clone()
    };
    let outcome = store
        .create_job(&second, &[entry_for(&second.tasks[0])], Some(&again))
        .await;
    assert_eq!(
        outcome.unwrap(),
        CreateOutcome::Replayed {
            job_id: job_id("job-1"),
            request_hash: "h1".into()
        }
    );
    assert_eq!(store.get_job(&job_id("job-2")).await.unwrap(), None);
    assert_eq!(pending(&store).await.len(), 1);
    assert_eq!(
        store
            .find_idempotency(&claim.tenant, &claim.key)
            .await
            .unwrap(),
        Some((job_id("job-1"), "h1".into()))
    );
    let other = TenantId::parse("other").unwrap();
    assert_eq!(
        store.find_idempotency(&other, &claim.key).await.unwrap(),
        None
    );
}

/// Creating a job id twice conflicts and leaves the first job as it was.
#[tokio::test]
async fn duplicate_job_id_conflicts() {
    let Some(store) = store("ddb duplicate_job_id_conflicts").await else {
        return;
    };
    let record = a_record("job-1", &["a"]);
    store.create_job(&record, &[], None).await.unwrap();
    let mut changed = record.clone();
    changed.job.message = "second".into();
    let err = store
        .create_job(&changed, &[entry_for(&record.tasks[0])], None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m == "job job-1 already exists"),
        "{err:?}"
    );
    assert!(pending(&store).await.is_empty());
    assert_eq!(
        store.load_job(&record.job.job_id).await.unwrap(),
        Some(record)
    );
}

/// A batch larger than one transaction is written in several; repeated keys inside it and
/// keys used before replay.
#[tokio::test]
async fn large_batch_is_split_across_transactions() {
    let Some(store) = store("ddb large_batch_is_split_across_transactions").await else {
        return;
    };
    let claim = |k: &str| IdempotencyClaim {
        tenant: TenantId::parse("acme").unwrap(),
        key: IdempotencyKey::parse(k).unwrap(),
        request_hash: format!("h-{k}"),
    };
    let early = a_record("job-early", &["a"]);
    store
        .create_job(&early, &[], Some(&claim("k-5")))
        .await
        .unwrap();
    let records: Vec<JobRecord> = (0..70)
        .map(|i| a_record(&format!("job-{i}"), &["a"]))
        .collect();
    let ready: Vec<Vec<QueueEntry>> = records
        .iter()
        .map(|r| vec![entry_for(&r.tasks[0])])
        .collect();
    let claims: Vec<IdempotencyClaim> = (0..70)
        .map(|i| claim(&format!("k-{}", if i == 69 { 0 } else { i })))
        .collect();
    let writes: Vec<NewJobWrite<'_>> = (0..70)
        .map(|i| NewJobWrite {
            record: &records[i],
            ready: &ready[i],
            idempotency: Some(&claims[i]),
        })
        .collect();
    let outcomes = store.create_jobs(&writes).await.unwrap();
    let replayed_early = CreateOutcome::Replayed {
        job_id: job_id("job-early"),
        request_hash: "h-k-5".into(),
    };
    let replayed_first = CreateOutcome::Replayed {
        job_id: job_id("job-0"),
        request_hash: "h-k-0".into(),
    };
    assert_eq!(outcomes[5], replayed_early);
    assert_eq!(outcomes[69], replayed_first);
    let created = outcomes
        .iter()
        .filter(|o| **o == CreateOutcome::Created)
        .count();
    assert_eq!(created, 68);
    assert_eq!(pending(&store).await.len(), 68);
    let all = JobFilter {
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.list_jobs(&all).await.unwrap().jobs.len(), 69);
}

/// A job too large for one item is refused whole, naming the limit.
#[tokio::test]
async fn oversized_job_is_refused_whole() {
    let Some(store) = store("ddb oversized_job_is_refused_whole").await else {
        return;
    };
    let mut record = a_record("job-big", &["a"]);
    record.job.input = json!("x".repeat(500_000));
    let err = store
        .create_job(&record, &[entry_for(&record.tasks[0])], None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("one DynamoDB item")),
        "{err:?}"
    );
    assert_eq!(store.get_job(&record.job.job_id).await.unwrap(), None);
    assert!(pending(&store).await.is_empty());
}

/// update_jobs applies the rule per existing job, persists the changes and dispatches.
#[tokio::test]
async fn update_jobs_writes_changes_and_dispatches() {
    let Some(store) = store("ddb update_jobs_writes_changes_and_dispatches").await else {
        return;
    };
    for id in ["job-1", "job-2"] {
        store
            .create_job(&a_record(id, &["a", "b", "c"]), &[], None)
            .await
            .unwrap();
    }
    let ids = [job_id("job-1"), job_id("job-missing"), job_id("job-2")];
    let mut seen = Vec::new();
    store
        .update_jobs(&ids, &mut |r: &mut JobRecord| {
            seen.push(r.job.job_id.clone());
            r.job.status = Status::Running;
            let t = r.task_mut(&TaskId::parse("b").unwrap()).unwrap();
            t.status = Status::Completed;
            t.output_artifact_uri = Some("artifact://b".into());
            vec![entry_for(&r.tasks[2])].into()
        })
        .await
        .unwrap();
    assert_eq!(seen, [job_id("job-1"), job_id("job-2")]);
    let loaded = store.load_job(&job_id("job-2")).await.unwrap().unwrap();
    let mut expected = a_record("job-2", &["a", "b", "c"]);
    expected.job.status = Status::Running;
    expected.tasks[1].status = Status::Completed;
    expected.tasks[1].output_artifact_uri = Some("artifact://b".into());
    assert_eq!(loaded, expected);
    assert_eq!(pending(&store).await.len(), 2);
    let running = JobFilter {
        status: Some(Status::Running),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store.list_jobs(&running).await.unwrap().jobs.len(),
        2,
        "status index follows"
    );
}

/// A job listed twice is applied twice, the second time to the first's result; tasks may be
/// reordered, replaced and dropped; entries from every job reach the outbox in apply order.
#[tokio::test]
async fn update_jobs_reapplies_repeated_ids_and_dispatches_in_order() {
    let Some(store) = store("ddb update_jobs_reapplies_repeated_ids").await else {
        return;
    };
    for id in ["job-1", "job-2"] {
        store
            .create_job(&a_record(id, &["a", "b", "c"]), &[], None)
            .await
            .unwrap();
    }
    let ids = [job_id("job-2"), job_id("job-1"), job_id("job-2")];
    let mut calls = 0;
    store
        .update_jobs(&ids, &mut |r: &mut JobRecord| {
            calls += 1;
            r.job.task_count += 1;
            r.job.message = format!("{} {}", r.job.message, calls);
            if r.job.job_id == job_id("job-2") {
                r.tasks.swap(0, 2);
                r.tasks.retain(|t| t.task_id.as_str() != "b");
                let extra = a_task(&r.job, &format!("x{calls}"));
                r.tasks.push(extra);
            }
            vec![entry_for(r.tasks.last().unwrap())].into()
        })
        .await
        .unwrap();
    let two = store.load_job(&job_id("job-2")).await.unwrap().unwrap();
    assert_eq!((two.job.task_count, two.job.message.as_str()), (5, " 1 3"));
    let tasks: Vec<_> = two.tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(tasks, ["x1", "a", "c", "x3"]);
    let one = store.load_job(&job_id("job-1")).await.unwrap().unwrap();
    assert_eq!(one.job.message, " 2");
    let order: Vec<_> = pending(&store)
        .await
        .iter()
        .map(|e| format!("{}/{}", e.job_id, e.task_id))
        .collect();
    assert_eq!(order, ["job-2/x1", "job-1/c", "job-2/x3"]);
}

/// Turns the answer to the next `TransactWriteItems` that succeeded into the one the SDK's
/// retry of a committed transaction gets without an idempotency token: every condition
/// failed. The write happened; its writer is told it did not.
/// (The test is sequential: the operation under way is the one last begun.)
#[derive(Debug, Clone, Default)]
struct LoseNextCommitAnswer {
    armed: Arc<std::sync::atomic::AtomicBool>,
    transact: Arc<std::sync::atomic::AtomicBool>,
}

impl aws_sdk_dynamodb::config::Intercept for LoseNextCommitAnswer {
    fn name(&self) -> &'static str {
        "LoseNextCommitAnswer"
    }

    fn read_before_execution(
        &self,
        ctx: &aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
        let transact = ctx
            .input()
            .downcast_ref::<TransactWriteItemsInput>()
            .is_some();
        self.transact
            .store(transact, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut aws_sdk_dynamodb::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_sdk_dynamodb::config::RuntimeComponents,
        _: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if !self.transact.load(std::sync::atomic::Ordering::SeqCst)
            || !ctx.response().status().is_success()
            || !self.armed.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(());
        }
        let body = json!({
            "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
            "Message": "Transaction cancelled (injected: the commit's answer was lost)",
            "CancellationReasons": [{"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"}],
        });
        let response = ctx.response_mut();
        *response.status_mut() = 400u16.try_into().expect("a status");
        *response.body_mut() = body.to_string().into();
        Ok(())
    }
}

/// A change that committed but was answered as failed (its answer lost, the SDK's retry then
/// failing against the write itself) is recognised by its writer token: the rule is not
/// applied a second time, so the caller keeps the first application's result and effects.
#[tokio::test]
async fn update_committed_but_answered_failed_is_applied_once() {
    let Some(aws) = TestAws::find("ddb update_committed_but_answered_failed").await else {
        return;
    };
    let name = TestAws::unique("splai");
    DynamoDb::open(&aws.sdk, &name, true)
        .await
        .expect("create the table");
    let lose = LoseNextCommitAnswer::default();
    let conf = aws_sdk_dynamodb::config::Builder::from(&aws.sdk)
        .interceptor(lose.clone())
        .build();
    let store = DynamoStore::new(DynamoDb {
        client: Client::from_conf(conf),
        table: name,
    });
    store
        .create_job(&a_record("job-1", &["a"]), &[], None)
        .await
        .unwrap();

    lose.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut calls = 0;
    store
        .update_jobs(&[job_id("job-1")], &mut |r: &mut JobRecord| {
            calls += 1;
            r.job.message = format!("{} applied {calls}", r.job.message);
            vec![entry_for(&r.tasks[0])].into()
        })
        .await
        .unwrap();
    assert!(
        !lose.armed.load(std::sync::atomic::Ordering::SeqCst),
        "the answer was lost"
    );
    assert_eq!(calls, 1, "applied once, though told the write failed");
    let loaded = store.load_job(&job_id("job-1")).await.unwrap().unwrap();
    assert_eq!(loaded.job.message, " applied 1");
    assert_eq!(pending(&store).await.len(), 1, "its entry dispatched once");

    // A later change is applied normally on top of it.
    store
        .update_jobs(&[job_id("job-1")], &mut |r: &mut JobRecord| {
            r.job.message.push_str(" and again");
            QueueWrites::default()
        })
        .await
        .unwrap();
    let loaded = store.load_job(&job_id("job-1")).await.unwrap().unwrap();
    assert_eq!(loaded.job.message, " applied 1 and again");
}

/// Jobs list newest first, filter on status/tenant/type, and page with a cursor that is only
/// handed out for full pages.
#[tokio::test]
async fn list_jobs_filters_and_pages_newest_first() {
    let Some(store) = store("ddb list_jobs_filters_and_pages_newest_first").await else {
        return;
    };
    for (i, (tenant, ty, st)) in [
        ("acme", "chat", Status::Queued),
        ("acme", "embedding", Status::Completed),
        ("beta", "chat", Status::Queued),
        ("acme", "chat", Status::Queued),
        ("acme", "chat", Status::Failed),
    ]
    .into_iter()
    .enumerate()
    {
        let record = JobRecord {
            job: a_job(&format!("job-{i}"), tenant, ty, st),
            tasks: vec![],
        };
        store.create_job(&record, &[], None).await.unwrap();
    }
    let ids = |p: &JobPage| {
        p.jobs
            .iter()
            .map(|j| j.job_id.to_string())
            .collect::<Vec<_>>()
    };
    let all = JobFilter {
        limit: 10,
        ..Default::default()
    };
    let page = store.list_jobs(&all).await.unwrap();
    assert_eq!(ids(&page), ["job-4", "job-3", "job-2", "job-1", "job-0"]);
    assert_eq!(page.next_cursor, None);
    for (filter, expected) in [
        (
            JobFilter {
                tenant: Some(TenantId::parse("acme").unwrap()),
                ..all.clone()
            },
            vec!["job-4", "job-3", "job-1", "job-0"],
        ),
        (
            JobFilter {
                status: Some(Status::Queued),
                ..all.clone()
            },
            vec!["job-3", "job-2", "job-0"],
        ),
        (
            JobFilter {
                job_type: Some("embedding".into()),
                ..all.clone()
            },
            vec!["job-1"],
        ),
    ] {
        assert_eq!(
            ids(&store.list_jobs(&filter).await.unwrap()),
            expected,
            "{filter:?}"
        );
    }
    let filter = JobFilter {
        tenant: Some(TenantId::parse("acme").unwrap()),
        job_type: Some("chat".into()),
        status: Some(Status::Queued),
        limit: 1,
        cursor: None,
    };
    let p1 = store.list_jobs(&filter).await.unwrap();
    assert_eq!(ids(&p1), ["job-3"]);
    let p2 = store
        .list_jobs(&JobFilter {
            cursor: p1.next_cursor,
            ..filter.clone()
        })
        .await
        .unwrap();
    assert_eq!(ids(&p2), ["job-0"]);
    assert!(p2.next_cursor.is_some(), "a full page hands out a cursor");
    let p3 = store
        .list_jobs(&JobFilter {
            cursor: p2.next_cursor,
            ..filter.clone()
        })
        .await
        .unwrap();
    assert!(p3.jobs.is_empty() && p3.next_cursor.is_none());
    let bad = JobFilter {
        cursor: Some("zzz".into()),
        ..filter
    };
    assert!(matches!(
        store.list_jobs(&bad).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Tasks list in planning order; `total` counts matches before paging.
#[tokio::test]
async fn list_tasks_keeps_planning_order_and_counts_before_paging() {
    let Some(store) = store("ddb list_tasks_keeps_planning_order").await else {
        return;
    };
    let mut record = a_record("job-1", &["z", "a", "m", "b"]);
    let w = WorkerId::parse("w-1").unwrap();
    for i in [0, 2, 3] {
        record.tasks[i].status = Status::Running;
        record.tasks[i].worker_id = Some(w.clone());
    }
    store.create_job(&record, &[], None).await.unwrap();
    let names = |p: &TaskPage| {
        p.tasks
            .iter()
            .map(|t| t.task_id.to_string())
            .collect::<Vec<_>>()
    };
    let all = store
        .list_tasks(&job_id("job-1"), &TaskFilter::default())
        .await
        .unwrap();
    assert_eq!(
        (all.total, names(&all)),
        (4, vec!["z".into(), "a".into(), "m".into(), "b".into()])
    );
    let filter = TaskFilter {
        status: Some(Status::Running),
        worker_id: Some(w),
        limit: Some(1),
        offset: 1,
    };
    let page = store.list_tasks(&job_id("job-1"), &filter).await.unwrap();
    assert_eq!((page.total, names(&page)), (3, vec!["m".to_owned()]));
    let missing = store
        .list_tasks(&job_id("job-2"), &TaskFilter::default())
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound(_))));
}

/// Renewal answers only for the task's current lease and only extends running tasks.
#[tokio::test]
async fn renew_leases_extends_only_current_running_leases() {
    let Some(store) = store("ddb renew_leases_extends_only_current").await else {
        return;
    };
    let mut record = a_record("job-1", &["run", "done"]);
    for (t, st) in record
        .tasks
        .iter_mut()
        .zip([Status::Running, Status::Completed])
    {
        t.status = st;
        t.lease_id = Some(LeaseId::parse(format!("lease-{}", t.task_id)).unwrap());
        t.lease_expires = Some(at(10));
    }
    store.create_job(&record, &[], None).await.unwrap();
    let renewal = |task: &str, lease: &str| LeaseRenewal {
        task: TaskRef {
            job_id: job_id("job-1"),
            task_id: TaskId::parse(task).unwrap(),
        },
        lease_id: LeaseId::parse(lease).unwrap(),
    };
    let renewals = [
        renewal("run", "lease-run"),
        renewal("run", "lease-old"),
        renewal("done", "lease-done"),
        renewal("ghost", "lease-run"),
    ];
    let out = store.renew_leases(&renewals, at(99)).await.unwrap();
    assert_eq!(
        out,
        [Some(Status::Running), None, Some(Status::Completed), None]
    );
    let loaded = store.load_job(&job_id("job-1")).await.unwrap().unwrap();
    assert_eq!(loaded.tasks[0].lease_expires, Some(at(99)));
    assert_eq!(loaded.tasks[1].lease_expires, Some(at(10)));
    let ghost_job = LeaseRenewal {
        task: TaskRef {
            job_id: job_id("job-none"),
            task_id: TaskId::parse("run").unwrap(),
        },
        lease_id: LeaseId::parse("lease-run").unwrap(),
    };
    assert_eq!(
        store.renew_leases(&[ghost_job], at(99)).await.unwrap(),
        [None]
    );
}

/// The sweep's candidates: open jobs with a task queued since before the cut-off or a
/// running task whose lease ran out before it, least recently changed first.
#[tokio::test]
async fn stale_jobs_are_found_by_queued_age_and_lapsed_leases() {
    let Some(store) = store("ddb stale_jobs_are_found").await else {
        return;
    };
    let mut queued_old = a_record("job-queued-old", &["a"]);
    queued_old.job.updated_at = at(100);
    let mut queued_new = a_record("job-queued-new", &["a"]);
    queued_new.job.updated_at = at(5_000);
    let mut lapsed = a_record("job-lapsed", &["a"]);
    lapsed.job.status = Status::Running;
    lapsed.job.updated_at = at(4_000);
    lapsed.tasks[0].status = Status::Running;
    lapsed.tasks[0].lease_id = Some(LeaseId::parse("l").unwrap());
    lapsed.tasks[0].lease_expires = Some(at(500));
    let mut done = a_record("job-done", &["a"]);
    done.job.status = Status::Completed;
    done.tasks[0].status = Status::Completed;
    for r in [&queued_old, &queued_new, &lapsed, &done] {
        store.create_job(r, &[], None).await.unwrap();
    }
    let stale = store.stale_jobs(at(1_000), 10).await.unwrap();
    assert_eq!(stale, [job_id("job-queued-old"), job_id("job-lapsed")]);
    assert_eq!(
        store.stale_jobs(at(1_000), 1).await.unwrap(),
        [job_id("job-queued-old")]
    );
}

/// Workers register, heartbeat, derive health from heartbeat age and list by id.
#[tokio::test]
async fn workers_register_heartbeat_and_age() {
    let Some(store) = store("ddb workers_register_heartbeat_and_age").await else {
        return;
    };
    let (a, b) = (
        WorkerId::parse("w-b").unwrap(),
        WorkerId::parse("w-a").unwrap(),
    );
    let reg = WorkerRegistration {
        cpu: 2.5,
        gpu: true,
        models: vec!["m1".into()],
        backends: vec!["vllm".into()],
        locality: Some("eu".into()),
        ..Default::default()
    };
    store.register_worker(&a, &reg, at(0)).await.unwrap();
    store
        .register_worker(&b, &WorkerRegistration::default(), at(0))
        .await
        .unwrap();
    let load = Heartbeat {
        queue_depth: 3,
        running_tasks: 1,
        cpu_util: 0.5,
        ..Default::default()
    };
    assert!(store.record_heartbeat(&a, &load, at(100)).await.unwrap());
    let ghost = WorkerId::parse("w-ghost").unwrap();
    assert!(
        !store
            .record_heartbeat(&ghost, &load, at(100))
            .await
            .unwrap()
    );
    let w = store.get_worker(&a, at(50)).await.unwrap().unwrap();
    let expected = Worker {
        worker_id: a.clone(),
        registration: reg,
        load,
        health: WorkerHealth::Healthy,
        registered_at: at(0),
        last_heartbeat: at(100),
    };
    assert_eq!(w, expected);
    let all = store.list_workers(at(50)).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|w| (&w.worker_id, w.health))
            .collect::<Vec<_>>(),
        [(&b, WorkerHealth::Stale), (&a, WorkerHealth::Healthy)]
    );
    assert_eq!(store.get_worker(&ghost, at(0)).await.unwrap(), None);
    assert!(store.get_worker(&ghost, at(0)).await.unwrap().is_none());
}

/// ping answers; a missing table fails opening, naming it and the variable, unless it is to
/// be created.
#[tokio::test]
async fn ping_answers_and_a_missing_table_is_named() {
    let Some(aws) = TestAws::find("ddb ping_answers_and_a_missing_table_is_named").await else {
        return;
    };
    let name = TestAws::unique("splai-missing");
    let err = DynamoDb::open(&aws.sdk, &name, false).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&name) && msg.contains("SPLAI_DYNAMODB_TABLE"),
        "{msg}"
    );
    let db = DynamoDb::open(&aws.sdk, &name, true).await.unwrap();
    DynamoStore::new(db.clone()).ping().await.unwrap();
    // Opening an existing table again (a second gateway, a restart) is fine either way.
    DynamoDb::open(&aws.sdk, &name, false).await.unwrap();
    DynamoDb::open(&aws.sdk, &name, true).await.unwrap();
    // A table made for something else is refused, naming what it lacks.
    let other = TestAws::unique("splai-other");
    let key = |name: &str, kind| {
        aws_sdk_dynamodb::types::KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let attribute = |name: &str| {
        aws_sdk_dynamodb::types::AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    db.client()
        .create_table()
        .table_name(&other)
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .key_schema(key("pk", aws_sdk_dynamodb::types::KeyType::Hash))
        .key_schema(key("sk", aws_sdk_dynamodb::types::KeyType::Range))
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .send()
        .await
        .unwrap();
    let msg = DynamoDb::open(&aws.sdk, &other, true)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&other) && msg.contains("no index `gsi1`"),
        "{msg}"
    );
}

/// Updates of one job from several processes at once (each its own client) never overwrite
/// each other: every update lands, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_many_processes_lose_nothing() {
    let Some(aws) = SerialMoto::start("ddb concurrent_updates_lose_nothing").await else {
        return;
    };
    let name = TestAws::unique("splai");
    let first = DynamoStore::new(DynamoDb::open(&aws.sdk, &name, true).await.unwrap());
    let records = [a_record("job-a", &["x"]), a_record("job-b", &["y"])];
    for r in &records {
        first.create_job(r, &[], None).await.unwrap();
    }
    let per_process = 8;
    let mut processes = Vec::new();
    for p in 0..4 {
        let store = DynamoStore::new(DynamoDb::open(&aws.sdk, &name, false).await.unwrap());
        processes.push(tokio::spawn(async move {
            let mut ids = vec![job_id("job-a"), job_id("job-b")];
            if p % 2 == 1 {
                ids.reverse();
            }
            for _ in 0..per_process {
                store
                    .update_jobs(&ids, &mut |r: &mut JobRecord| {
                        r.job.message.push('.');
                        r.tasks[0].attempt += 1;
                        vec![entry_for(&r.tasks[0])].into()
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for p in processes {
        p.await.unwrap();
    }
    for id in ["job-a", "job-b"] {
        let r = first.load_job(&job_id(id)).await.unwrap().unwrap();
        assert_eq!(r.job.message.len(), 4 * per_process, "{id}");
        assert_eq!(r.tasks[0].attempt as usize, 4 * per_process, "{id}");
    }
    assert_eq!(
        pending(&first).await.len(),
        2 * 4 * per_process,
        "one entry per commit"
    );
}

mod audit_contract {
    use super::*;
    use crate::testing::audit as contract;

    #[tokio::test]
    async fn append_list_filter_and_page() {
        let Some(db) = table("ddb audit append_list_filter_and_page").await else {
            return;
        };
        contract::append_list_filter_and_page(&DynamoAuditLog::new(db)).await;
    }

    #[tokio::test]
    async fn verify_accepts_an_intact_chain() {
        let Some(db) = table("ddb audit verify_accepts_an_intact_chain").await else {
            return;
        };
        contract::verify_accepts_an_intact_chain(&DynamoAuditLog::new(db)).await;
    }

    /// An item rewritten straight in the table is found by verify.
    #[tokio::test]
    async fn verify_finds_an_item_rewritten_in_the_table() {
        let Some(db) = table("ddb audit verify_finds_an_item_rewritten").await else {
            return;
        };
        let log = DynamoAuditLog::new(db.clone());
        let db = &db;
        contract::verify_finds_a_tampered_event(&log, |id| async move {
            let k = item::key("AUDIT", item::pad(id));
            let got = db
                .client()
                .get_item()
                .table_name(db.table())
                .set_key(Some(k))
                .send()
                .await
                .unwrap();
            let mut stored = got.item().unwrap().clone();
            let mut e: crate::domain::AuditEvent = item::json(&stored, "body").unwrap();
            e.event.actor = "mallory".into();
            stored.insert("body".into(), item::s(item::to_json(&e).unwrap()));
            db.client()
                .put_item()
                .table_name(db.table())
                .set_item(Some(stored))
                .send()
                .await
                .unwrap();
        })
        .await;
    }

    /// Two clients on one table (as two gateway processes hold) appending at once still build
    /// one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_from_two_clients_keep_one_chain() {
        let Some(aws) = SerialMoto::start("ddb audit concurrent_appends").await else {
            return;
        };
        let name = TestAws::unique("splai");
        let a = DynamoDb::open(&aws.sdk, &name, true).await.unwrap();
        let b = DynamoDb::open(&aws.sdk, &name, false).await.unwrap();
        contract::concurrent_appends_keep_one_chain(
            Arc::new(DynamoAuditLog::new(a)),
            Arc::new(DynamoAuditLog::new(b)),
        )
        .await;
    }
}

/// The run-lock contract.
#[tokio::test]
async fn run_locks_one_holder_at_a_time() {
    let Some(s) = store("ddb run_locks_one_holder_at_a_time").await else {
        return;
    };
    crate::testing::locks::one_holder_at_a_time(&s).await;
}

mod webhook_contract {
    use super::*;
    use crate::testing::webhooks as contract;

    #[tokio::test]
    async fn terminal_change_writes_one_delivery() {
        let Some(s) = store("ddb webhooks terminal_change_writes_one_delivery").await else {
            return;
        };
        contract::terminal_change_writes_one_delivery(&s).await;
    }

    #[tokio::test]
    async fn claims_are_leased_due_and_fenced() {
        let Some(s) = store("ddb webhooks claims_are_leased_due_and_fenced").await else {
            return;
        };
        contract::claims_are_leased_due_and_fenced(&s).await;
    }

    #[tokio::test]
    async fn outcomes_end_or_reschedule_deliveries() {
        let Some(s) = store("ddb webhooks outcomes_end_or_reschedule_deliveries").await else {
            return;
        };
        contract::outcomes_end_or_reschedule_deliveries(&s).await;
    }

    #[tokio::test]
    async fn task_events_only_when_asked() {
        let Some(s) = store("ddb webhooks task_events_only_when_asked").await else {
            return;
        };
        contract::task_events_only_when_asked(&s).await;
    }

    /// Two clients on one table, as two gateway processes hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_hand_out_each_delivery_once() {
        let Some(aws) = SerialMoto::start("ddb webhooks concurrent_claims").await else {
            return;
        };
        let name = TestAws::unique("splai");
        let a = DynamoDb::open(&aws.sdk, &name, true).await.unwrap();
        let b = DynamoDb::open(&aws.sdk, &name, false).await.unwrap();
        contract::concurrent_claims_hand_out_each_delivery_once(
            Arc::new(DynamoStore::new(a)),
            Arc::new(DynamoStore::new(b)),
        )
        .await;
    }
}
