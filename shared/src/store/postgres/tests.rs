//! Behaviour of the Postgres store on a real server, one fresh database per test
//! (`crate::testing::postgres`); skipped with a printed reason when no server is reachable.

use std::time::Duration;

use super::*;
use crate::domain::{LeaseId, Requirements, TaskId, TaskRef, WorkerCaps, WorkerHealth};
use crate::queue::LeaseQueue;
use crate::queue::postgres::PostgresLeaseQueue;
use crate::store::{IdempotencyClaim, QueueWrites};
use crate::testing::postgres::TestDb;
use crate::testing::records::{a_full_record, a_job, a_record, a_task, at, entry_for, job_id};
use serde_json::json;

async fn setup(
    test: &str,
    dispatch: Dispatch,
) -> Option<(TestDb, PostgresStore, PostgresLeaseQueue)> {
    let t = TestDb::create(test).await?;
    let store = PostgresStore::new(t.db.clone(), dispatch);
    let queue = PostgresLeaseQueue::new(t.db.clone());
    Some((t, store, queue))
}

async fn pending(queue: &PostgresLeaseQueue) -> u64 {
    let d = queue.depth().await.unwrap();
    d.interactive + d.standard + d.batch
}

/// A record with every optional field set reads back equal, whole and job-only.
#[tokio::test]
async fn job_record_round_trips_exactly() {
    let Some((_db, store, _)) = setup("job_record_round_trips_exactly", Dispatch::Outbox).await
    else {
        return;
    };
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
    let Some((_db, store, queue)) = setup(
        "direct_dispatch_writes_the_queue_not_the_outbox",
        Dispatch::Direct,
    )
    .await
    else {
        return;
    };
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
    let Some((_db, store, queue)) = setup(
        "outbox_dispatch_writes_the_outbox_not_the_queue",
        Dispatch::Outbox,
    )
    .await
    else {
        return;
    };
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
    let Some((_db, store, queue)) =
        setup("idempotent_replay_writes_nothing", Dispatch::Direct).await
    else {
        return;
    };
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
    let Some((_db, store, queue)) = setup("duplicate_job_id_conflicts", Dispatch::Direct).await
    else {
        return;
    };
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
    let Some((_db, store, queue)) = setup(
        "update_jobs_writes_changes_and_dispatches",
        Dispatch::Direct,
    )
    .await
    else {
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
    let Some((_db, store, queue)) = setup(
        "update_jobs_reapplies_repeated_ids_and_dispatches_in_order",
        Dispatch::Direct,
    )
    .await
    else {
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
    let Some((_db, store, _)) =
        setup("list_jobs_filters_and_pages_newest_first", Dispatch::Outbox).await
    else {
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
    let Some((_db, store, _)) = setup(
        "list_tasks_keeps_planning_order_and_counts_before_paging",
        Dispatch::Outbox,
    )
    .await
    else {
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
    let Some((_db, store, _)) = setup(
        "renew_leases_extends_only_current_running_leases",
        Dispatch::Outbox,
    )
    .await
    else {
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
}

/// Workers register, heartbeat, derive health from heartbeat age and list by id.
#[tokio::test]
async fn workers_register_heartbeat_and_age() {
    let Some((_db, store, _)) = setup("workers_register_heartbeat_and_age", Dispatch::Outbox).await
    else {
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
}

/// ping answers on a healthy database.
#[tokio::test]
async fn ping_answers() {
    let Some((_db, store, queue)) = setup("ping_answers", Dispatch::Direct).await else {
        return;
    };
    store.ping().await.unwrap();
    queue.ping().await.unwrap();
    assert_eq!(queue.backend_name(), "postgres");
}

/// A second migrate, from this pool or from processes starting together, applies nothing; an
/// edited migration is reported by name.
#[tokio::test]
async fn migrations_are_applied_once_even_by_racing_processes() {
    let Some(t) = TestDb::create("migrations_are_applied_once_even_by_racing_processes").await
    else {
        return;
    };
    assert!(t.db.migrate().await.unwrap().is_empty());
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let url = t.url().to_owned();
            tokio::spawn(async move { PgDb::open(&url, 2).await.map(|_| ()) })
        })
        .collect();
    for r in racers {
        r.await.unwrap().unwrap();
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(t.db.pool())
            .await
            .unwrap();
    let all: Vec<i64> = super::db::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, all);
    sqlx::query("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        .execute(t.db.pool())
        .await
        .unwrap();
    let err = PgDb::open(t.url(), 2).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m == "migration 0001_init was edited after it was applied"),
        "{err:?}"
    );
}

/// A fresh database migrates from nothing: several processes opening it at once all succeed
/// and exactly one applies the schema.
#[tokio::test]
async fn racing_first_migrations_apply_the_schema_once() {
    let Some(t) = TestDb::create("racing_first_migrations_apply_the_schema_once").await else {
        return;
    };
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        .execute(t.db.pool())
        .await
        .unwrap();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let url = t.url().to_owned();
            tokio::spawn(async move {
                let db = PgDb::connect(&url, 2).await.unwrap();
                db.migrate().await.unwrap()
            })
        })
        .collect();
    let mut applied = Vec::new();
    for r in racers {
        applied.extend(r.await.unwrap());
    }
    applied.sort();
    let all: Vec<&str> = super::db::MIGRATIONS.iter().map(|m| m.1).collect();
    assert_eq!(applied, all, "one process applied each, the rest found it");
}

/// Updates of one job from several processes at once (each its own pool) serialise on the
/// job's row lock: no update is lost, whatever the interleaving.
#[tokio::test]
async fn concurrent_updates_from_many_processes_lose_nothing() {
    let Some((t, store, _)) = setup(
        "concurrent_updates_from_many_processes_lose_nothing",
        Dispatch::Direct,
    )
    .await
    else {
        return;
    };
    let records = [a_record("job-a", &["x"]), a_record("job-b", &["y"])];
    for r in &records {
        store.create_job(r, &[], None).await.unwrap();
    }
    let per_process = 25;
    let mut processes = Vec::new();
    for p in 0..4 {
        let store = PostgresStore::new(PgDb::connect(t.url(), 3).await.unwrap(), Dispatch::Direct);
        processes.push(tokio::spawn(async move {
            // Half the processes name the jobs in the other order: the row locks are still
            // taken in one order, so they cannot deadlock.
            let mut ids = vec![job_id("job-a"), job_id("job-b")];
            if p % 2 == 1 {
                ids.reverse();
            }
            for _ in 0..per_process {
                store
                    .update_jobs(&ids, &mut |r: &mut JobRecord| {
                        r.job.message.push('.');
                        r.tasks[0].attempt += 1;
                        QueueWrites::default()
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
        let r = store.load_job(&job_id(id)).await.unwrap().unwrap();
        assert_eq!(r.job.message.len(), 4 * per_process, "{id}");
        assert_eq!(r.tasks[0].attempt as usize, 4 * per_process, "{id}");
    }
}

/// A store whose connections are all terminated mid-run (`pg_terminate_backend`) answers the
/// next calls on fresh connections.
#[tokio::test]
async fn store_survives_terminated_connections() {
    let Some((t, store, queue)) =
        setup("store_survives_terminated_connections", Dispatch::Direct).await
    else {
        return;
    };
    for round in 0..3 {
        let record = a_record(&format!("job-{round}"), &["a"]);
        let ready: Vec<_> = record.tasks.iter().map(entry_for).collect();
        store.create_job(&record, &ready, None).await.unwrap();
        // Fill the pool with idle connections, every one of which is then cut.
        let filter = JobFilter {
            limit: 5,
            ..Default::default()
        };
        let reads = (0..8).map(|_| store.list_jobs(&filter));
        for r in futures::future::join_all(reads).await {
            r.unwrap();
        }
        assert!(t.terminate_connections().await >= 8);
        store
            .update_jobs(
                std::slice::from_ref(&record.job.job_id),
                &mut |r: &mut JobRecord| {
                    r.job.message = "touched".into();
                    QueueWrites::default()
                },
            )
            .await
            .unwrap();
        let loaded = store.load_job(&record.job.job_id).await.unwrap().unwrap();
        assert_eq!(loaded.job.message, "touched");
        assert_eq!(pending(&queue).await, round + 1);
    }
}

/// Text Postgres refuses (a NUL byte) is an error, not a corrupted or partial write; JSON
/// bodies keep `\u0000` escapes as written.
#[tokio::test]
async fn refused_text_writes_nothing() {
    let Some((_t, store, queue)) = setup("refused_text_writes_nothing", Dispatch::Direct).await
    else {
        return;
    };
    let mut record = a_record("job-nul", &["a"]);
    record.job.input = json!("nul \u{0} inside");
    store.create_job(&record, &[], None).await.unwrap();
    assert_eq!(
        store.load_job(&record.job.job_id).await.unwrap(),
        Some(record)
    );
    let mut bad = a_record("job-bad", &["a"]);
    bad.job.job_type = "chat\u{0}".into();
    let ready: Vec<_> = bad.tasks.iter().map(entry_for).collect();
    assert!(store.create_job(&bad, &ready, None).await.is_err());
    assert_eq!(store.load_job(&bad.job.job_id).await.unwrap(), None);
    assert_eq!(pending(&queue).await, 0);
}
