//! The engine conformance suite: every case runs against every backend combination through
//! [`engine_suite!`](crate::engine_suite). Time moves only through the harness clock.

use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock::Clock;
use crate::domain::{JobId, Status, TenantId, WorkerRegistration};
use crate::engine::EngineError;
use crate::store::{JobFilter, TaskFilter};

/// Instantiates every suite case as a `#[tokio::test]` using `$setup` (an async fn returning a
/// [`Harness`], or an `Option<Harness>` that is `None` when the service behind it is missing
/// and the case is skipped; see [`IntoHarness`](crate::testing::IntoHarness)).
#[macro_export]
macro_rules! engine_suite {
    ($setup:path) => {
        $crate::engine_suite!(@cases $setup;
            dag_runs_in_dependency_order_passing_outputs,
            failed_attempt_is_retried_after_backoff,
            exhausted_task_is_dead_lettered_and_fails_its_job,
            expired_lease_is_requeued_for_another_worker,
            heartbeat_keeps_a_lease_alive,
            lease_expiry_on_last_attempt_dead_letters,
            duplicate_report_changes_nothing_twice,
            finished_tasks_leave_nothing_queued,
            stale_entries_are_acked_away_at_claim,
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
            lost_queue_entry_is_reconciled,
            lost_lease_is_reconciled,
            streamed_chunks_follow_the_current_lease,
            any_model_worker_claims_every_model,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(h) = $crate::testing::IntoHarness::into_harness($setup().await) else {
                    return;
                };
                $crate::testing::suite::$case(h).await;
            }
        )*
    };
}

async fn tasks_of(h: &Harness, job: &JobId) -> Vec<crate::domain::Task> {
    h.engine
        .list_tasks(job, &TaskFilter::default())
        .await
        .expect("tasks")
        .tasks
}

async fn status_of(h: &Harness, job: &JobId) -> Status {
    h.engine.job(job).await.expect("job").status
}

/// A chain runs one task at a time, each seeing its dependency's output; the job completes
/// with the last task's output.
pub async fn dag_runs_in_dependency_order_passing_outputs(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_chain_job()).await.unwrap().job_id;
    assert_eq!(status_of(&h, &job).await, Status::Queued);

    let mut order = Vec::new();
    for expected in ["a", "b", "c"] {
        let got = h.claim(&w, 10).await;
        assert_eq!(got.len(), 1, "only the ready task is claimable");
        assert_eq!(got[0].task_id.as_str(), expected);
        if let Some(prev) = order.last() {
            let key = format!("dep:{prev}:output_uri");
            assert_eq!(
                got[0].inputs[&key],
                json!(format!("artifact://{job}/{prev}/output.json"))
            );
        }
        assert_eq!(status_of(&h, &job).await, Status::Running);
        assert_eq!(h.complete(&got[0]).await.outcome, "completed");
        order.push(expected);
    }
    let j = h.engine.job(&job).await.unwrap();
    assert_eq!(j.status, Status::Completed);
    assert_eq!(
        j.result_artifact_uri.as_deref(),
        Some(format!("artifact://{job}/c/output.json").as_str())
    );
    assert!(h.claim(&w, 10).await.is_empty());
}

/// A retryable failure requeues the task after a backoff, and the next attempt can finish it.
pub async fn failed_attempt_is_retried_after_backoff(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_retryable_job(2)).await.unwrap().job_id;
    let first = h.claim(&w, 1).await.remove(0);
    assert_eq!(first.attempt, 1);
    assert_eq!(h.fail(&first, true).await.outcome, "retrying");
    let t = &tasks_of(&h, &job).await[0];
    assert_eq!(
        (t.status, t.error.as_deref()),
        (Status::Queued, Some("boom"))
    );

    assert!(
        h.claim(&w, 1).await.is_empty(),
        "backoff holds the retry back"
    );
    h.advance(Duration::from_secs(2));
    let second = h.claim(&w, 1).await.remove(0);
    assert_eq!(second.attempt, 2);
    h.complete(&second).await;
    assert_eq!(status_of(&h, &job).await, Status::Completed);
}

/// A task that fails every allowed attempt lands in the dead letters, fails its job and
/// cancels its dependents.
pub async fn exhausted_task_is_dead_lettered_and_fails_its_job(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_poison_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    assert_eq!(h.fail(&a, true).await.outcome, "failed");

    let j = h.engine.job(&job).await.unwrap();
    assert_eq!(j.status, Status::Failed);
    assert!(
        j.message.contains("poison"),
        "message names the task: {}",
        j.message
    );
    let tasks = tasks_of(&h, &job).await;
    assert_eq!(
        (tasks[0].status, tasks[1].status),
        (Status::Failed, Status::Canceled)
    );
    let dead = h.engine.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].entry.job_id.clone(), dead[0].entry.task_id.as_str()),
        (job, "poison")
    );
    assert!(h.claim(&w, 10).await.is_empty());
}

/// A worker that stops heartbeating loses its lease; another worker finishes the task and the
/// first worker's late report changes nothing.
pub async fn expired_lease_is_requeued_for_another_worker(h: Harness) {
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let lost = h.claim(&w1, 1).await.remove(0);
    assert!(
        h.claim(&w2, 1).await.is_empty(),
        "a leased task is not claimable"
    );

    h.advance(LEASE + Duration::from_secs(1));
    let swept = h.engine.sweep().await.unwrap();
    assert_eq!(swept.requeued, 1);
    assert_eq!(
        h.engine.metrics().totals()["queue_expired_requeued_total"],
        1
    );

    let taken = h.claim(&w2, 1).await.remove(0);
    assert_eq!(taken.attempt, 2);
    assert_eq!(h.complete(&lost).await.outcome, "stale");
    assert_eq!(h.complete(&taken).await.outcome, "completed");
    let t = &tasks_of(&h, &job).await[0];
    assert_eq!(
        (t.status, t.worker_id.as_ref()),
        (Status::Completed, Some(&w2))
    );
}

/// A worker shutting down hands its lease back: the task is claimable at once by another
/// worker (no wait for expiry), the attempt is not counted, and a stranger cannot release it.
pub async fn handed_back_lease_is_claimable_at_once_uncounted(h: Harness) {
    use crate::engine::ReleaseOutcome;
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let first = h.claim(&w1, 1).await.remove(0);
    assert_eq!(h.release(&w2, &[&first]).await, [ReleaseOutcome::Stale]);
    assert!(h.claim(&w2, 1).await.is_empty(), "still leased to w1");

    assert_eq!(h.release(&w1, &[&first]).await, [ReleaseOutcome::Released]);
    let t = &tasks_of(&h, &job).await[0];
    assert_eq!((t.status, t.attempt), (Status::Queued, 0));
    assert_eq!(status_of(&h, &job).await, Status::Queued);
    let second = h.claim(&w2, 1).await.remove(0);
    assert_eq!(second.attempt, 1, "the handed-back attempt did not count");
    assert_eq!(h.complete(&first).await.outcome, "stale");
    assert_eq!(h.release(&w1, &[&first]).await, [ReleaseOutcome::Stale]);
    assert_eq!(h.complete(&second).await.outcome, "completed");
    assert_eq!(status_of(&h, &job).await, Status::Completed);
}

/// Heartbeats renew the lease, so a long task is not taken away.
pub async fn heartbeat_keeps_a_lease_alive(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    for _ in 0..3 {
        h.advance(LEASE - Duration::from_secs(2));
        let reply = h.heartbeat(&w, &[&a]).await;
        assert_eq!(reply.renewed.len(), 1, "{reply:?}");
        assert_eq!(h.engine.sweep().await.unwrap().requeued, 0);
    }
    let t = &tasks_of(&h, &job).await[0];
    assert_eq!(t.lease_expires, Some(h.clock.now() + LEASE));
    assert_eq!(h.complete(&a).await.outcome, "completed");
}

/// A lease that runs out on the task's last allowed attempt dead-letters it.
pub async fn lease_expiry_on_last_attempt_dead_letters(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_retryable_job(1)).await.unwrap().job_id;
    for attempt in 1..=2 {
        let a = h.claim(&w, 1).await;
        assert_eq!(a.len(), 1, "attempt {attempt} is claimable");
        h.advance(LEASE + Duration::from_secs(1));
        h.engine.sweep().await.unwrap();
    }
    assert_eq!(status_of(&h, &job).await, Status::Failed);
    assert_eq!(h.engine.dead_letters(10).await.unwrap().len(), 1);
    assert!(h.claim(&w, 1).await.is_empty());
}

/// Repeating a report is accepted, and dependents are released only once.
pub async fn duplicate_report_changes_nothing_twice(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_chain_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    assert_eq!(h.complete(&a).await.outcome, "completed");
    let before = tasks_of(&h, &job).await;
    let again = h.complete(&a).await;
    assert_eq!((again.outcome, again.applied), ("duplicate", false));
    assert_eq!(tasks_of(&h, &job).await, before);
    assert_eq!(h.claim(&w, 10).await.len(), 1, "b is released exactly once");
}

/// A job run to the end, a report repeated on the way, leaves nothing in the queue: every
/// lease is acked, whether the ack commits with the report (a queue in the store's
/// database) or follows it.
pub async fn finished_tasks_leave_nothing_queued(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_chain_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    assert_eq!(h.complete(&a).await.outcome, "completed");
    assert_eq!(h.complete(&a).await.outcome, "duplicate");
    loop {
        let next = h.claim(&w, 10).await;
        if next.is_empty() {
            break;
        }
        for n in &next {
            assert_eq!(h.complete(n).await.outcome, "completed");
        }
    }
    assert_eq!(status_of(&h, &job).await, Status::Completed);
    let depth = h.engine.backends().queue.depth().await.expect("depth");
    assert_eq!(depth, crate::queue::QueueDepth::default());
}

/// Entries whose tasks are no longer waiting to run (a lost ack, a late duplicate enqueue)
/// are claimed and acked away in the same claim, and the task runs nowhere: the claim answers
/// only the runnable task behind them, and the queue is left empty.
pub async fn stale_entries_are_acked_away_at_claim(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let done = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let first = h.claim(&w, 1).await.remove(0);
    assert_eq!(h.complete(&first).await.outcome, "completed");
    let running = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let second = h.claim(&w, 1).await.remove(0);
    // Entries again for the finished task and the running one, then a task that can run.
    let mut stale = Vec::new();
    for job in [&done, &running] {
        let task = tasks_of(&h, job).await.remove(0);
        stale.push(crate::engine::rules::entry_for(&task, h.clock.now()));
    }
    let queue = &h.engine.backends().queue;
    queue.enqueue(&stale).await.unwrap();
    let ready = h.engine.submit(a_single_task_job()).await.unwrap().job_id;

    let claimed = h.claim(&w, 10).await;
    let jobs: Vec<&JobId> = claimed.iter().map(|a| &a.job_id).collect();
    assert_eq!(jobs, [&ready]);
    assert_eq!(h.engine.metrics().totals()["queue_acked_total"], 1 + 2);
    assert_eq!(h.complete(&claimed[0]).await.outcome, "completed");
    assert_eq!(h.complete(&second).await.outcome, "completed");
    assert!(h.claim(&w, 10).await.is_empty());
    for job in [&done, &running, &ready] {
        assert_eq!(status_of(&h, job).await, Status::Completed);
    }
    let depth = queue.depth().await.expect("depth");
    assert_eq!(depth, crate::queue::QueueDepth::default());
}

/// Canceling a queued job cancels its tasks; nothing is claimable afterwards.
pub async fn cancel_stops_queued_tasks(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_chain_job()).await.unwrap().job_id;
    h.engine.cancel(&job).await.unwrap();
    assert_eq!(status_of(&h, &job).await, Status::Canceled);
    assert!(
        tasks_of(&h, &job)
            .await
            .iter()
            .all(|t| t.status == Status::Canceled)
    );
    assert!(h.claim(&w, 10).await.is_empty());
}

/// A running worker learns of the cancel on its next heartbeat; its report changes nothing.
pub async fn cancel_reaches_running_worker_on_heartbeat(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_chain_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    h.engine.cancel(&job).await.unwrap();
    let reply = h.heartbeat(&w, &[&a]).await;
    assert_eq!(reply.cancel.len(), 1);
    assert_eq!(reply.cancel[0].task_id, a.task_id);
    assert_eq!(h.complete(&a).await.outcome, "stale");
    assert_eq!(status_of(&h, &job).await, Status::Canceled);
    h.advance(LEASE * 2);
    h.engine.sweep().await.unwrap();
    assert!(h.claim(&w, 10).await.is_empty());
    assert_eq!(status_of(&h, &job).await, Status::Canceled);
}

/// A completed job cannot be canceled; canceling twice is fine.
pub async fn cancel_of_finished_job_conflicts_and_repeat_cancel_is_accepted(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let done = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    h.complete(&a).await;
    assert!(matches!(
        h.engine.cancel(&done).await,
        Err(EngineError::Conflict(_))
    ));

    let other = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    h.engine.cancel(&other).await.unwrap();
    h.engine.cancel(&other).await.unwrap();
    let missing = JobId::parse("job-missing").unwrap();
    assert!(matches!(
        h.engine.cancel(&missing).await,
        Err(EngineError::NotFound(_))
    ));
}

/// Retrying a failed job runs its unfinished tasks again from attempt one.
pub async fn retry_reruns_unfinished_tasks_of_failed_job(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_poison_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    h.fail(&a, false).await;
    assert_eq!(status_of(&h, &job).await, Status::Failed);

    h.engine.retry(&job).await.unwrap();
    assert_eq!(status_of(&h, &job).await, Status::Queued);
    let again = h.claim(&w, 1).await.remove(0);
    assert_eq!((again.task_id.as_str(), again.attempt), ("poison", 1));
    h.complete(&again).await;
    let after = h.claim(&w, 1).await.remove(0);
    h.complete(&after).await;
    assert_eq!(status_of(&h, &job).await, Status::Completed);
    assert!(matches!(
        h.engine.retry(&job).await,
        Err(EngineError::Conflict(_))
    ));
}

/// Requeuing a dead letter brings its job back to life.
pub async fn requeued_dead_letter_revives_its_job(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let job = h.engine.submit(a_poison_job()).await.unwrap().job_id;
    let a = h.claim(&w, 1).await.remove(0);
    h.fail(&a, true).await;
    let dead = h.engine.dead_letters(10).await.unwrap();
    let refs: Vec<_> = dead.iter().map(|d| d.entry.task_ref()).collect();

    assert_eq!(h.engine.requeue_dead_letters(&refs).await.unwrap(), refs);
    assert!(h.engine.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(status_of(&h, &job).await, Status::Queued);
    let again = h.claim(&w, 1).await.remove(0);
    assert_eq!(again.task_id.as_str(), "poison");
    h.complete(&again).await;
    h.complete(&h.claim(&w, 1).await.remove(0)).await;
    assert_eq!(status_of(&h, &job).await, Status::Completed);
}

/// Interactive work is claimed before standard before batch; FIFO within a class.
pub async fn claims_follow_priority_classes_then_fifo(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let mut submitted = Vec::new();
    for p in [
        Priority::Batch,
        Priority::Standard,
        Priority::Interactive,
        Priority::Standard,
        Priority::Batch,
    ] {
        submitted.push((h.engine.submit(a_job_in_class(p)).await.unwrap().job_id, p));
    }
    let order: Vec<_> = h
        .claim(&w, 10)
        .await
        .into_iter()
        .map(|a| a.job_id)
        .collect();
    let expected: Vec<_> = [2, 1, 3, 0, 4]
        .iter()
        .map(|&i| submitted[i].0.clone())
        .collect();
    assert_eq!(order, expected);
}

/// GPU, backend, model and target-worker constraints decide who may claim.
pub async fn claims_honour_hard_constraints(h: Harness) {
    let cpu = h.cpu_worker("cpu").await;
    let gpu_reg = WorkerRegistration {
        gpu: true,
        backends: vec!["vllm".into()],
        models: vec!["llama3-70b".into()],
        ..Default::default()
    };
    let gpu = h.worker("gpu", gpu_reg).await;
    let mut t = a_task("big", &[]);
    t.resources.gpu = true;
    t.constraints.backend = Some("vllm".into());
    t.constraints.model = Some("llama3-70b".into());
    let big = h.engine.submit(a_job_with(vec![t])).await.unwrap().job_id;
    let mut pinned = a_task("pinned", &[]);
    pinned.constraints.worker_id = Some(cpu.clone());
    let pinned_job = h
        .engine
        .submit(a_job_with(vec![pinned]))
        .await
        .unwrap()
        .job_id;

    let on_gpu = h.claim(&gpu, 10).await;
    assert_eq!(
        on_gpu.iter().map(|a| &a.job_id).collect::<Vec<_>>(),
        vec![&big]
    );
    let on_cpu = h.claim(&cpu, 10).await;
    assert_eq!(
        on_cpu.iter().map(|a| &a.job_id).collect::<Vec<_>>(),
        vec![&pinned_job]
    );
}

/// A repeated submit with the same key returns the first job; a different body conflicts.
pub async fn idempotent_submit_returns_the_first_job(h: Harness) {
    let key = crate::domain::IdempotencyKey::parse("req-1").unwrap();
    let new = NewJob {
        idempotency_key: Some(key.clone()),
        ..a_chain_job()
    };
    let first = h.engine.submit(new.clone()).await.unwrap();
    let again = h.engine.submit(new.clone()).await.unwrap();
    assert_eq!(
        (again.job_id.clone(), again.replayed),
        (first.job_id.clone(), true)
    );
    let listed = h
        .engine
        .list_jobs(&JobFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 1, "the repeat created nothing");

    let different = NewJob {
        input: json!("other"),
        ..new.clone()
    };
    assert!(matches!(
        h.engine.submit(different).await,
        Err(EngineError::Conflict(_))
    ));
    let other_tenant = NewJob {
        tenant: Some(TenantId::parse("t2").unwrap()),
        ..new
    };
    assert!(
        !h.engine.submit(other_tenant).await.unwrap().replayed,
        "keys are per tenant"
    );
}

/// A bulk submit answers per job: valid jobs are written with their ready tasks, an invalid
/// DAG is rejected alone, a key used before (or earlier in the batch) replays, and a key reused
/// for a different request conflicts.
pub async fn bulk_submit_accepts_or_rejects_each_job_on_its_own(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let key = |k: &str| Some(crate::domain::IdempotencyKey::parse(k).unwrap());
    let keyed = NewJob {
        idempotency_key: key("k1"),
        ..a_single_task_job()
    };
    let earlier = h.engine.submit(keyed.clone()).await.unwrap().job_id;
    let cyclic = a_job_with(vec![a_task("x", &["y"]), a_task("y", &["x"])]);
    let in_batch = NewJob {
        idempotency_key: key("k2"),
        ..a_chain_job()
    };
    let reused = NewJob {
        input: json!("different"),
        ..keyed.clone()
    };
    let batch = vec![
        a_single_task_job(),
        cyclic,
        keyed,
        in_batch.clone(),
        in_batch,
        reused,
        a_chain_job(),
    ];
    let out = h.engine.submit_many(batch).await.unwrap();
    assert_eq!(out.len(), 7);
    let ok = |i: usize| out[i].as_ref().unwrap().clone();
    assert!(!ok(0).replayed);
    assert!(matches!(out[1], Err(EngineError::Plan(_))), "{:?}", out[1]);
    assert_eq!((ok(2).job_id, ok(2).replayed), (earlier.clone(), true));
    assert!(!ok(3).replayed);
    assert_eq!((ok(4).job_id, ok(4).replayed), (ok(3).job_id, true));
    assert!(
        matches!(out[5], Err(EngineError::Conflict(_))),
        "{:?}",
        out[5]
    );
    let listed = h
        .engine
        .list_jobs(&JobFilter {
            limit: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.jobs.len(), 4, "earlier job + three new ones");
    assert_eq!(
        listed.jobs[0].job_id,
        ok(6).job_id,
        "batch order is creation order"
    );
    // The ready tasks of the new jobs (one each) were enqueued with them; `earlier`'s too.
    let claimed = h.claim(&w, 10).await;
    assert_eq!(claimed.len(), 4);
    assert_eq!(status_of(&h, &ok(3).job_id).await, Status::Running);
}

/// One report call can carry results for tasks of many jobs.
pub async fn reports_for_many_jobs_apply_in_one_call(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        jobs.push(h.engine.submit(a_single_task_job()).await.unwrap().job_id);
    }
    let got = h.claim(&w, 5).await;
    let mut reports: Vec<_> = got
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
    reports.push(reports[0].clone());
    let results = h.engine.report(&reports).await.unwrap();
    let outcomes: Vec<_> = results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            "completed",
            "completed",
            "completed",
            "completed",
            "completed",
            "duplicate"
        ]
    );
    for j in &jobs {
        assert_eq!(status_of(&h, j).await, Status::Completed);
    }
}

/// Jobs list newest first, filter exactly, and page with a cursor.
pub async fn job_listing_filters_and_pages(h: Harness) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let tenant = TenantId::parse(if i % 2 == 0 { "even" } else { "odd" }).unwrap();
        let new = NewJob {
            tenant: Some(tenant),
            ..a_single_task_job()
        };
        ids.push(h.engine.submit(new).await.unwrap().job_id);
    }
    h.engine.cancel(&ids[4]).await.unwrap();

    let page1 = h
        .engine
        .list_jobs(&JobFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.jobs.iter().map(|j| &j.job_id).collect::<Vec<_>>(),
        vec![&ids[4], &ids[3]]
    );
    let page2 = h
        .engine
        .list_jobs(&JobFilter {
            limit: 2,
            cursor: page1.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.jobs.iter().map(|j| &j.job_id).collect::<Vec<_>>(),
        vec![&ids[2], &ids[1]]
    );

    let even = JobFilter {
        tenant: Some(TenantId::parse("even").unwrap()),
        limit: 10,
        ..Default::default()
    };
    let listed = h.engine.list_jobs(&even).await.unwrap();
    assert_eq!(listed.jobs.len(), 3);
    assert_eq!(listed.next_cursor, None);
    let canceled = JobFilter {
        status: Some(Status::Canceled),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(h.engine.list_jobs(&canceled).await.unwrap().jobs.len(), 1);
    let typed = JobFilter {
        job_type: Some("nope".into()),
        limit: 10,
        ..Default::default()
    };
    assert!(h.engine.list_jobs(&typed).await.unwrap().jobs.is_empty());
}

/// Task listing filters by status and worker and pages with limit/offset over the total.
pub async fn task_listing_filters_and_pages(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let tasks = (0..4).map(|i| a_task(&format!("t{i}"), &[])).collect();
    let job = h.engine.submit(a_job_with(tasks)).await.unwrap().job_id;
    let claimed = h.claim(&w, 1).await;
    h.complete(&claimed[0]).await;

    let page = h
        .engine
        .list_tasks(
            &job,
            &TaskFilter {
                limit: Some(2),
                offset: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.total, 4);
    assert_eq!(
        page.tasks
            .iter()
            .map(|t| t.task_id.as_str())
            .collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    let done = TaskFilter {
        status: Some(Status::Completed),
        ..Default::default()
    };
    assert_eq!(h.engine.list_tasks(&job, &done).await.unwrap().total, 1);
    let by_worker = TaskFilter {
        worker_id: Some(w),
        ..Default::default()
    };
    assert_eq!(
        h.engine.list_tasks(&job, &by_worker).await.unwrap().tasks[0]
            .task_id
            .as_str(),
        "t0"
    );
    let missing = JobId::parse("job-missing").unwrap();
    assert!(matches!(
        h.engine.list_tasks(&missing, &TaskFilter::default()).await,
        Err(EngineError::NotFound(_))
    ));
}

/// One claim hands out up to `max` tasks across jobs.
pub async fn claims_are_batched_up_to_max(h: Harness) {
    let w = h.cpu_worker("w1").await;
    for _ in 0..7 {
        h.engine.submit(a_single_task_job()).await.unwrap();
    }
    assert_eq!(h.claim(&w, 5).await.len(), 5);
    assert_eq!(h.claim(&w, 5).await.len(), 2);
    assert_eq!(h.engine.metrics().totals()["queue_claimed_total"], 7);
}

/// A ready task whose queue entry was lost (an external queue that restarted empty) is
/// enqueued again by the sweep once it has waited `reconcile_after`, and then runs; a task
/// the queue still holds is left alone.
pub async fn lost_queue_entry_is_reconciled(h: Harness) {
    let w = h.cpu_worker("w1").await;
    let lost = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let kept = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let task = tasks_of(&h, &lost).await.remove(0);
    let lost_task = TaskRef {
        job_id: lost.clone(),
        task_id: task.task_id,
    };
    let queue = &h.engine.backends().queue;
    queue
        .discard(std::slice::from_ref(&lost_task))
        .await
        .unwrap();
    assert_eq!(
        h.engine.sweep().await.unwrap().reconciled,
        0,
        "too soon: the task may still be on its way to the queue"
    );

    h.advance(h.engine.config().reconcile_after + Duration::from_secs(1));
    assert_eq!(h.engine.sweep().await.unwrap().reconciled, 1);
    assert_eq!(queue.holds(&[lost_task]).await.unwrap(), [true]);
    let claimed = h.claim(&w, 10).await;
    let mut jobs: Vec<&JobId> = claimed.iter().map(|a| &a.job_id).collect();
    jobs.sort();
    let mut expected = vec![&lost, &kept];
    expected.sort();
    assert_eq!(jobs, expected);
    for a in &claimed {
        assert_eq!(h.complete(a).await.outcome, "completed");
    }
    assert_eq!(status_of(&h, &lost).await, Status::Completed);
    assert_eq!(status_of(&h, &kept).await, Status::Completed);
    assert_eq!(h.engine.sweep().await.unwrap().reconciled, 0);
}

/// A running task whose lease the queue lost (so no expiry would ever come) and whose worker
/// went silent is expired by the reconciliation once the lease has been over for
/// `reconcile_after`: it runs again on another worker, the lost attempt counted.
pub async fn lost_lease_is_reconciled(h: Harness) {
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    let job = h.engine.submit(a_single_task_job()).await.unwrap().job_id;
    let first = h.claim(&w1, 1).await.remove(0);
    let task = TaskRef {
        job_id: job.clone(),
        task_id: first.task_id.clone(),
    };
    h.engine.backends().queue.discard(&[task]).await.unwrap();

    h.advance(LEASE + Duration::from_secs(1));
    let swept = h.engine.sweep().await.unwrap();
    assert_eq!(
        (swept.requeued, swept.reconciled),
        (0, 0),
        "not yet overdue"
    );
    h.advance(h.engine.config().reconcile_after);
    assert_eq!(h.engine.sweep().await.unwrap().reconciled, 1);

    let second = h.claim(&w2, 1).await.remove(0);
    assert_eq!(second.attempt, 2);
    assert_eq!(h.complete(&first).await.outcome, "stale");
    assert_eq!(h.complete(&second).await.outcome, "completed");
    assert_eq!(status_of(&h, &job).await, Status::Completed);
}

/// Chunks are stored only under the task's current lease, in order, once per `(lease, seq)`;
/// a lease lost to expiry can add nothing to the next attempt's stream, nor can anyone after
/// the task finished.
pub async fn streamed_chunks_follow_the_current_lease(h: Harness) {
    let (w1, w2) = (h.cpu_worker("w1").await, h.cpu_worker("w2").await);
    h.engine.submit(a_single_task_job()).await.unwrap();
    let first = h.claim(&w1, 1).await.remove(0);
    let task = crate::domain::TaskRef {
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
    // A repeated request (same seqs) adds nothing; the next one continues.
    assert!(
        e.append_chunks(&task, &first.lease_id, 1, &texts(&["llo", " wor"]))
            .await
            .unwrap()
    );
    let got = e.chunks_after(&task, 0, 100).await.unwrap();
    let text: Vec<_> = got.iter().map(|c| (c.seq, c.text.as_str())).collect();
    assert_eq!(text, [(0, "He"), (1, "llo"), (2, " wor")]);
    assert!(got.windows(2).all(|w| w[0].id < w[1].id));
    let page = e.chunks_after(&task, got[0].id, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].text, "llo");

    h.advance(LEASE + Duration::from_secs(1));
    e.sweep().await.unwrap();
    let second = h.claim(&w2, 1).await.remove(0);
    assert!(
        !e.append_chunks(&task, &first.lease_id, 3, &texts(&["late"]))
            .await
            .unwrap()
    );
    assert!(
        e.append_chunks(&task, &second.lease_id, 0, &texts(&["Hi"]))
            .await
            .unwrap()
    );
    let newer = e.chunks_after(&task, got[2].id, 100).await.unwrap();
    assert_eq!(newer.len(), 1);
    assert_eq!(
        (newer[0].lease_id.clone(), newer[0].text.as_str()),
        (second.lease_id.clone(), "Hi")
    );

    h.complete(&second).await;
    assert!(
        !e.append_chunks(&task, &second.lease_id, 1, &texts(&["after"]))
            .await
            .unwrap()
    );
    let other = crate::domain::TaskRef {
        job_id: JobId::parse("job-none").unwrap(),
        task_id: first.task_id.clone(),
    };
    assert!(e.chunks_after(&other, 0, 100).await.unwrap().is_empty());
}

/// A worker advertising the model `*` (the development echo backend) claims tasks whatever
/// model they require; one without it claims only its own models.
pub async fn any_model_worker_claims_every_model(h: Harness) {
    let reg = |models: &[&str]| WorkerRegistration {
        backends: vec!["echo".into()],
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        ..Default::default()
    };
    let narrow = h.worker("narrow", reg(&["llama3"])).await;
    let any = h.worker("any", reg(&[crate::domain::ANY_MODEL])).await;
    let mut t = a_task("gen", &[]);
    t.constraints.model = Some("gpt-4o-mini".into());
    let job = h.engine.submit(a_job_with(vec![t])).await.unwrap().job_id;
    assert!(h.claim(&narrow, 1).await.is_empty());
    let got = h.claim(&any, 1).await;
    assert_eq!(
        got.iter().map(|a| &a.job_id).collect::<Vec<_>>(),
        vec![&job]
    );
}
