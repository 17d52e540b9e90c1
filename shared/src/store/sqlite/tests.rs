//! Behaviour of the SQLite store on real temp files.

use std::time::Duration;

use tempfile::TempDir;

use super::writer::test_support::{holding_write, until_queued};
use super::*;
use crate::domain::{LeaseId, Requirements, TaskId, TaskRef, WorkerCaps, WorkerHealth};
use crate::queue::LeaseQueue;
use crate::queue::sqlite::SqliteLeaseQueue;
use crate::store::{ClaimRequest, IdempotencyClaim, QueueWrites};
use crate::testing::records::{a_full_record, a_job, a_record, a_task, at, entry_for, job_id};

async fn setup(dispatch: Dispatch) -> (TempDir, SqliteStore, SqliteLeaseQueue) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
    (
        dir,
        SqliteStore::new(db.clone(), dispatch),
        SqliteLeaseQueue::new(db),
    )
}

async fn pending(queue: &SqliteLeaseQueue) -> u64 {
    let d = queue.depth().await.unwrap();
    d.interactive + d.standard + d.batch
}

/// A record with every optional field set reads back equal, whole and job-only.
#[tokio::test]
async fn job_record_round_trips_exactly() {
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
    let record = a_full_record();
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

/// Direct dispatch enqueues in the store's transaction and leaves the outbox empty.
#[tokio::test]
async fn direct_dispatch_writes_the_queue_not_the_outbox() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    let record = a_record("job-1", &["a", "b"]);
    let ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
    store.create_job(&record, &ready, None).await.unwrap();
    assert_eq!(pending(&queue).await, 2);
    assert!(store.pending_dispatch(10).await.unwrap().is_empty());
    let leases = queue
        .claim(&WorkerCaps::default(), 10, Duration::from_secs(5), at(0))
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(
        leases[0].entry,
        QueueEntry {
            attempt: 1,
            ..ready[0].clone()
        }
    );
}

/// Outbox dispatch writes the outbox in order, not the queue; marking removes entries.
#[tokio::test]
async fn outbox_dispatch_writes_the_outbox_not_the_queue() {
    let (_dir, store, queue) = setup(Dispatch::Outbox).await;
    let mut record = a_record("job-1", &["a", "b"]);
    record.tasks[1].constraints.backend = Some("vllm".into());
    let mut ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
    ready[1].requirements = Requirements {
        gpu: true,
        backend: Some("vllm".into()),
        model: Some("m".into()),
        worker_id: Some(WorkerId::parse("w-9").unwrap()),
    };
    ready[1].not_before = at(77);
    store.create_job(&record, &ready, None).await.unwrap();
    assert_eq!(pending(&queue).await, 0);
    let out = store.pending_dispatch(10).await.unwrap();
    assert_eq!(
        out.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
        ready
    );
    assert!(out[0].0 < out[1].0);
    assert_eq!(store.pending_dispatch(1).await.unwrap(), out[..1]);
    store.mark_dispatched(&[out[0].0]).await.unwrap();
    assert_eq!(store.pending_dispatch(10).await.unwrap(), out[1..]);
}

/// A repeated idempotency key returns the first job and writes nothing at all.
#[tokio::test]
async fn idempotent_replay_writes_nothing() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    let claim = IdempotencyClaim {
        tenant: TenantId::parse("acme").unwrap(),
        key: IdempotencyKey::parse("k-1").unwrap(),
        request_hash: "h1".into(),
    };
    let first = a_record("job-1", &["a"]);
    let ready = vec![entry_for(&first.tasks[0])];
    assert_eq!(
        store
            .create_job(&first, &ready, Some(&claim))
            .await
            .unwrap(),
        CreateOutcome::Created
    );

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
    assert_eq!(pending(&queue).await, 1);
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
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    let record = a_record("job-1", &["a"]);
    store.create_job(&record, &[], None).await.unwrap();
    let err = store
        .create_job(&record, &[entry_for(&record.tasks[0])], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(m) if m == "job job-1 already exists"));
    assert_eq!(pending(&queue).await, 0);
}

/// update_jobs applies the rule per existing job, persists the changes and dispatches.
#[tokio::test]
async fn update_jobs_writes_changes_and_dispatches() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
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
    assert_eq!(pending(&queue).await, 2);
    let running = JobFilter {
        status: Some(Status::Running),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store.list_jobs(&running).await.unwrap().jobs.len(),
        2,
        "status column follows"
    );
}

/// A job listed twice is applied twice, the second time to the first's result; tasks may be
/// reordered, replaced and dropped; entries from every job are dispatched in apply order.
#[tokio::test]
async fn update_jobs_reapplies_repeated_ids_and_dispatches_in_order() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
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
    let leases = queue
        .claim(&WorkerCaps::default(), 10, Duration::from_secs(5), at(0))
        .await
        .unwrap();
    let order: Vec<_> = leases
        .iter()
        .map(|l| format!("{}/{}", l.entry.job_id, l.entry.task_id))
        .collect();
    assert_eq!(order, ["job-2/x1", "job-1/c", "job-2/x3"]);
}

/// Jobs list newest first, filter on status/tenant/type, and page with a cursor that is only
/// handed out for full pages.
#[tokio::test]
async fn list_jobs_filters_and_pages_newest_first() {
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
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

    let all = store
        .list_jobs(&JobFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&all), ["job-4", "job-3", "job-2", "job-1", "job-0"]);
    assert_eq!(all.next_cursor, None);

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
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
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
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
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
}

/// Workers register, heartbeat, derive health from heartbeat age and list by id.
#[tokio::test]
async fn workers_register_heartbeat_and_age() {
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
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
}

/// ping answers on a healthy database.
#[tokio::test]
async fn ping_answers() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    store.ping().await.unwrap();
    queue.ping().await.unwrap();
    assert_eq!(queue.backend_name(), "sqlite");
}

/// The writer keeps the records it wrote (`cache.rs`), and a change must still start from
/// what the file holds: after another connection's commit, after a write that failed, and
/// after a lease renewal rewrote a task.
#[tokio::test]
async fn changes_start_from_the_file_not_from_a_stale_kept_record() {
    let (dir, store, _) = setup(Dispatch::Direct).await;
    let other = SqliteStore::new(
        SqliteDb::open(&dir.path().join("splai.db")).await.unwrap(),
        Dispatch::Direct,
    );
    let id = job_id("job-1");
    let ids = std::slice::from_ref(&id);
    let mut record = a_record("job-1", &["a"]);
    record.tasks[0].status = Status::Running;
    record.tasks[0].lease_id = Some(LeaseId::parse("lease-a").unwrap());
    record.tasks[0].lease_expires = Some(at(10));
    store.create_job(&record, &[], None).await.unwrap();
    // What a change through `s` starts from: the job's message, its task count, its lease.
    let seen_by = |s: &SqliteStore| {
        let s = s.clone();
        let id = id.clone();
        async move {
            let mut seen = None;
            s.update_jobs(&[id], &mut |r: &mut JobRecord| {
                seen = Some((
                    r.job.message.clone(),
                    r.tasks.len(),
                    r.tasks[0].lease_expires,
                ));
                QueueWrites::default()
            })
            .await
            .unwrap();
            seen.unwrap()
        }
    };

    // Another connection (another process) changes the job that `store` created.
    other
        .update_jobs(ids, &mut |r: &mut JobRecord| {
            r.job.message = "other".into();
            QueueWrites::default()
        })
        .await
        .unwrap();
    assert_eq!(seen_by(&store).await, ("other".into(), 1, Some(at(10))));

    // A write that fails after its rule ran: two new tasks with one id break the task key.
    let failed = store
        .update_jobs(ids, &mut |r: &mut JobRecord| {
            r.job.message = "lost".into();
            let extra = a_task(&r.job, "dup");
            r.tasks.push(extra.clone());
            r.tasks.push(extra);
            QueueWrites::default()
        })
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(seen_by(&store).await, ("other".into(), 1, Some(at(10))));

    // A heartbeat extends the lease in the task's row.
    let renewal = LeaseRenewal {
        task: TaskRef {
            job_id: id.clone(),
            task_id: TaskId::parse("a").unwrap(),
        },
        lease_id: LeaseId::parse("lease-a").unwrap(),
    };
    let renewed = store.renew_leases(&[renewal], at(99)).await.unwrap();
    assert_eq!(renewed, [Some(Status::Running)]);
    assert_eq!(seen_by(&store).await, ("other".into(), 1, Some(at(99))));
    assert_eq!(seen_by(&other).await, ("other".into(), 1, Some(at(99))));
}

/// The store's statements with a limit are prepared once (a bare `LIMIT ?` made SQLite parse
/// and plan them again whenever the limit was bound).
#[tokio::test]
async fn statements_are_not_prepared_again() {
    let (_dir, store, _queue) = setup(Dispatch::Outbox).await;
    for sql in [
        PENDING_OUTBOX,
        jobs::STALE_JOBS,
        chunks::AFTER,
        prune::CANDIDATES,
        webhooks::CLAIM,
    ] {
        assert_eq!(reprepares(&store.db, sql).await, 0, "{sql}");
    }
}

/// A change is prepared from the writer's committed records before it takes the writer
/// (`update::Prepared`): written as prepared when its job did not change meanwhile (the rule
/// runs once), and applied afresh to the job as it now is when another write changed it
/// while the change waited for the writer (the rule runs again; nothing is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_prepared_ahead_is_applied_afresh_when_its_job_changed_meanwhile() {
    let (_dir, store, _) = setup(Dispatch::Direct).await;
    let id = job_id("job-1");
    store
        .create_job(&a_record("job-1", &["a"]), &[], None)
        .await
        .unwrap();
    let append = |s: &SqliteStore, word: &'static str| {
        let (s, id) = (s.clone(), id.clone());
        async move {
            let mut calls = 0;
            s.update_jobs(&[id], &mut |r: &mut JobRecord| {
                calls += 1;
                r.job.message.push_str(word);
                QueueWrites::default()
            })
            .await
            .unwrap();
            calls
        }
    };
    assert_eq!(
        append(&store, "a").await,
        1,
        "nothing changed the job meanwhile"
    );

    // A write holds the writer; the change prepares from "a" and queues behind it.
    let (holder, release) = holding_write(&store.db, move |c, cache| {
        update::update_jobs(c, cache, Dispatch::Direct, &[job_id("job-1")], &mut |r| {
            r.job.message.push('h');
            QueueWrites::default()
        })
    })
    .await;
    let change = tokio::spawn(append(&store, "u"));
    until_queued(&store.db, 1).await;
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(
        change.await.unwrap(),
        2,
        "prepared from a stale record, applied again"
    );
    let job = store.load_job(&id).await.unwrap().unwrap().job;
    assert_eq!(job.message, "ahu");
    assert_eq!(append(&store, "!").await, 1);
    assert_eq!(
        store.load_job(&id).await.unwrap().unwrap().job.message,
        "ahu!"
    );
}

/// With Direct dispatch a change's acks are deletes in its own transaction: one commit, after
/// which the acked entry is gone and an entry the same change made ready again is kept.
#[tokio::test]
async fn acks_commit_with_the_change_that_decides_them() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    assert!(store.acks_with_changes());
    let record = a_record("job-1", &["a", "b"]);
    let ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
    store.create_job(&record, &ready, None).await.unwrap();
    let leases = queue
        .claim(&WorkerCaps::default(), 10, Duration::from_secs(60), at(0))
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    let (done, again) = (&leases[0], &leases[1]);

    let commits = store.db.writer_commits();
    store
        .update_jobs(&[job_id("job-1")], &mut |r: &mut JobRecord| {
            r.job.message = "changed".into();
            QueueWrites {
                enqueue: vec![again.entry.clone()],
                ack: vec![done.lease_id.clone(), again.lease_id.clone()],
            }
        })
        .await
        .unwrap();
    assert_eq!(store.db.writer_commits(), commits + 1, "one transaction");
    let d = queue.depth().await.unwrap();
    assert_eq!((d.leased, pending(&queue).await), (0, 1), "{d:?}");
    let left = queue
        .claim(&WorkerCaps::default(), 10, Duration::from_secs(60), at(1))
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].entry.task_id, again.entry.task_id);
    assert_eq!(
        store
            .load_job(&job_id("job-1"))
            .await
            .unwrap()
            .unwrap()
            .job
            .message,
        "changed"
    );
}

/// A store dispatching to an outbox cannot reach the queue in its transaction: it takes no
/// acks, and the engine acks through the queue after the commit.
#[tokio::test]
async fn outbox_dispatch_takes_no_acks() {
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
    assert!(!store.acks_with_changes());
}

/// A claim of up to ten entries by `caps` at time 0.
fn claim_of_ten(caps: &WorkerCaps) -> ClaimRequest<'_> {
    ClaimRequest {
        worker: caps,
        max: 10,
        lease_for: Duration::from_secs(60),
        now: at(0),
    }
}

/// With Direct dispatch a claim and the change it starts are one transaction: one commit,
/// each claimed job's rule sees exactly its own leases in claim order, and what the rule
/// wrote and acked is there afterwards.
#[tokio::test]
async fn claim_and_update_commit_together() {
    let (_dir, store, queue) = setup(Dispatch::Direct).await;
    for (job, tasks) in [("job-1", &["a", "b"][..]), ("job-2", &["c"][..])] {
        let record = a_record(job, tasks);
        let ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
        store.create_job(&record, &ready, None).await.unwrap();
    }
    let caps = WorkerCaps::default();
    let claim = claim_of_ten(&caps);
    let commits = store.db.writer_commits();
    let mut seen = Vec::new();
    let leases = store
        .claim_and_update(&claim, &mut |r: &mut JobRecord, leases: &[&Lease]| {
            let tasks: Vec<String> = leases.iter().map(|l| l.entry.task_id.to_string()).collect();
            seen.push((r.job.job_id.to_string(), tasks.clone()));
            r.job.message = tasks.join(",");
            // The second job's lease is done with at once.
            let ack = if r.job.job_id.as_str() == "job-2" {
                leases.iter().map(|l| l.lease_id.clone()).collect()
            } else {
                Vec::new()
            };
            QueueWrites {
                enqueue: Vec::new(),
                ack,
            }
        })
        .await
        .unwrap()
        .expect("Direct dispatch claims in the store");
    assert_eq!(store.db.writer_commits(), commits + 1, "one transaction");
    let claimed: Vec<&str> = leases.iter().map(|l| l.entry.task_id.as_str()).collect();
    assert_eq!(claimed, ["a", "b", "c"]);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("job-1".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ("job-2".to_owned(), vec!["c".to_owned()])
        ]
    );
    let message = |id| {
        let store = &store;
        async move {
            store
                .load_job(&job_id(id))
                .await
                .unwrap()
                .unwrap()
                .job
                .message
        }
    };
    assert_eq!(message("job-1").await, "a,b");
    assert_eq!(message("job-2").await, "c");
    let d = queue.depth().await.unwrap();
    assert_eq!((d.leased, pending(&queue).await), (2, 0), "{d:?}");

    // Nothing left to claim: no write at all.
    let commits = store.db.writer_commits();
    let none = store
        .claim_and_update(&claim, &mut |_: &mut JobRecord, _: &[&Lease]| {
            panic!("no job was claimed")
        })
        .await
        .unwrap();
    assert_eq!(none, Some(Vec::new()));
    assert_eq!(store.db.writer_commits(), commits);
}

/// A store dispatching to an outbox does not hold the queue: it claims nothing itself.
#[tokio::test]
async fn outbox_dispatch_does_not_claim() {
    let (_dir, store, _) = setup(Dispatch::Outbox).await;
    let caps = WorkerCaps::default();
    let claim = claim_of_ten(&caps);
    let out = store
        .claim_and_update(&claim, &mut |_: &mut JobRecord, _: &[&Lease]| {
            panic!("an outbox store claims nothing")
        })
        .await
        .unwrap();
    assert!(out.is_none());
}
