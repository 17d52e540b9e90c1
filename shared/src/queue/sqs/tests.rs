//! The SQS queue on its own, against the AWS emulator.

use std::time::Duration;

use super::*;
use crate::clock::{Clock, SystemClock, truncate_millis};
use crate::domain::{JobId, Priority, Requirements, TaskId, TenantId, WorkerId};
use crate::testing::aws::TestAws;

fn an_entry(task: &str, priority: Priority) -> QueueEntry {
    QueueEntry {
        job_id: JobId::parse("job-1").unwrap(),
        task_id: TaskId::parse(task).unwrap(),
        tenant: TenantId::parse("t1").unwrap(),
        priority,
        requirements: Requirements::default(),
        attempt: 0,
        max_attempts: 3,
        not_before: now(),
    }
}

fn now() -> Timestamp {
    truncate_millis(SystemClock.now())
}

fn cpu() -> WorkerCaps {
    WorkerCaps {
        worker_id: Some(WorkerId::parse("w1").unwrap()),
        ..Default::default()
    }
}

fn names(leases: &[Lease]) -> Vec<&str> {
    leases.iter().map(|l| l.entry.task_id.as_str()).collect()
}

const LEASE: Duration = Duration::from_secs(30);

/// Fresh queues, or `None` to skip.
async fn a_queue(test: &str) -> Option<SqsLeaseQueue> {
    let aws = TestAws::find(test).await?;
    let settings = AwsSettings {
        sqs_queue_prefix: TestAws::unique("splai"),
        create_resources: true,
        ..AwsSettings::default()
    };
    Some(SqsLeaseQueue::open(&aws.sdk, &settings).await.unwrap())
}

/// A claim drains the classes in order, past one receive of ten, and FIFO within a class.
#[tokio::test]
async fn claim_takes_classes_in_order_across_batches() {
    let Some(q) = a_queue("sqs claim_takes_classes_in_order").await else {
        return;
    };
    let mut entries: Vec<QueueEntry> = (0..12)
        .map(|i| an_entry(&format!("s{i:02}"), Priority::Standard))
        .collect();
    entries.push(an_entry("b", Priority::Batch));
    entries.push(an_entry("i", Priority::Interactive));
    q.enqueue(&entries).await.unwrap();

    let got = q.claim(&cpu(), 14, LEASE, now()).await.unwrap();
    let mut expected = vec!["i".to_owned()];
    expected.extend((0..12).map(|i| format!("s{i:02}")));
    expected.push("b".into());
    assert_eq!(names(&got), expected);
    assert!(got.iter().all(|l| l.entry.attempt == 1));
    assert!(q.claim(&cpu(), 10, LEASE, now()).await.unwrap().is_empty());
    let d = q.depth().await.unwrap();
    assert_eq!(
        (d.interactive, d.standard, d.batch, d.leased),
        (0, 0, 0, 14)
    );
}

/// An entry the worker may not run is handed back uncounted; a release does not count either;
/// a nack does, and holds the entry back until its retry time.
#[tokio::test]
async fn only_nacks_and_expiries_count_as_deliveries() {
    let Some(q) = a_queue("sqs only_nacks_count").await else {
        return;
    };
    let mut gpu_entry = an_entry("g", Priority::Standard);
    gpu_entry.requirements.gpu = true;
    q.enqueue(&[gpu_entry]).await.unwrap();
    assert!(q.claim(&cpu(), 1, LEASE, now()).await.unwrap().is_empty());
    let gpu = WorkerCaps { gpu: true, ..cpu() };
    let first = q.claim(&gpu, 1, LEASE, now()).await.unwrap().remove(0);
    assert_eq!(first.entry.attempt, 1, "the hand-back did not count");

    q.release(std::slice::from_ref(&first.lease_id))
        .await
        .unwrap();
    let second = q.claim(&gpu, 1, LEASE, now()).await.unwrap().remove(0);
    assert_eq!(second.entry.attempt, 1, "the release did not count");

    let retry_at = now() + Duration::from_millis(1200);
    q.nack(&[(second.lease_id.clone(), retry_at)])
        .await
        .unwrap();
    assert!(q.claim(&gpu, 1, LEASE, now()).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let third = q.claim(&gpu, 1, LEASE, now()).await.unwrap().remove(0);
    assert_eq!(third.entry.attempt, 2, "the nack counted");
}

/// Renew answers for held leases only; ack removes the message for good; a lease id of
/// another backend is ignored.
#[tokio::test]
async fn renew_and_ack_act_on_held_leases() {
    let Some(q) = a_queue("sqs renew_and_ack").await else {
        return;
    };
    q.enqueue(&[an_entry("a", Priority::Standard)])
        .await
        .unwrap();
    let a = q
        .claim(&cpu(), 1, Duration::from_secs(1), now())
        .await
        .unwrap()
        .remove(0);
    let foreign = LeaseId::generate();
    let held = q
        .renew(&[a.lease_id.clone(), foreign.clone()], now() + LEASE)
        .await
        .unwrap();
    assert_eq!(held, std::slice::from_ref(&a.lease_id));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        q.claim(&cpu(), 1, LEASE, now()).await.unwrap().is_empty(),
        "renewed past its first second"
    );
    q.ack(&[a.lease_id.clone(), foreign]).await.unwrap();
    q.ack(&[a.lease_id]).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
}

/// Dead letters carry their reason, list oldest first, and requeue sends back only the tasks
/// asked for, with attempts reset.
#[tokio::test]
async fn dead_letters_list_and_requeue() {
    let Some(q) = a_queue("sqs dead_letters").await else {
        return;
    };
    q.enqueue(&[
        an_entry("x", Priority::Batch),
        an_entry("y", Priority::Batch),
    ])
    .await
    .unwrap();
    let got = q.claim(&cpu(), 2, LEASE, now()).await.unwrap();
    let t0 = now();
    q.dead_letter(&[(got[0].lease_id.clone(), "first".into())], t0)
        .await
        .unwrap();
    q.dead_letter(
        &[(got[1].lease_id.clone(), "second".into())],
        t0 + Duration::from_secs(1),
    )
    .await
    .unwrap();
    let dead = q.list_dead(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    assert_eq!(dead[0].entry.task_id, got[0].entry.task_id);
    assert_eq!(dead[0].dead_at, t0);
    assert_eq!(q.list_dead(1).await.unwrap().len(), 1);
    assert_eq!(q.depth().await.unwrap().dead, 2);

    let x = dead[0].entry.task_ref();
    let none = TaskRef {
        job_id: JobId::parse("job-none").unwrap(),
        task_id: TaskId::parse("x").unwrap(),
    };
    assert_eq!(
        q.requeue_dead(&[none, x.clone()], now()).await.unwrap(),
        std::slice::from_ref(&x)
    );
    assert_eq!(q.list_dead(10).await.unwrap().len(), 1);
    let back = q.claim(&cpu(), 10, LEASE, now()).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].entry.task_ref(), back[0].entry.attempt), (x, 1));
}
