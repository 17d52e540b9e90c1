//! No lost work across two systems: the store (SQLite) and an external queue (Redis). A
//! crash between the store's commit and the enqueue must not strand the job's tasks.

#![cfg(all(feature = "sqlite", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use splai_shared::domain::{
    DeadLetter, Expired, Lease, LeaseId, QueueEntry, Status, TaskRef, Timestamp, WorkerCaps,
};
use splai_shared::engine::Backends;
use splai_shared::queue::{LeaseQueue, QueueDepth, QueueError};
use splai_shared::store::sqlite::{SqliteDb, SqliteStore};
use splai_shared::store::{
    Dispatch, DispatchOutbox, JobStore, RunLocks, WebhookOutbox, WorkerStore,
};
use splai_shared::testing::redis::TestRedis;
use splai_shared::testing::{Harness, a_job_with, a_task};

/// The real queue, except that every enqueue fails as if the process had died between the
/// store's commit and the enqueue: fault injection around the real component, not a fake.
struct DiesBeforeEnqueue(Arc<dyn LeaseQueue>);

#[async_trait]
impl LeaseQueue for DiesBeforeEnqueue {
    fn backend_name(&self) -> &'static str {
        self.0.backend_name()
    }
    async fn enqueue(&self, _: &[QueueEntry]) -> Result<(), QueueError> {
        Err(QueueError::Unavailable("the process died here".into()))
    }
    async fn claim(
        &self,
        w: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        self.0.claim(w, max, lease_for, now).await
    }
    async fn renew(&self, l: &[LeaseId], until: Timestamp) -> Result<Vec<LeaseId>, QueueError> {
        self.0.renew(l, until).await
    }
    async fn ack(&self, l: &[LeaseId]) -> Result<(), QueueError> {
        self.0.ack(l).await
    }
    async fn nack(&self, l: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        self.0.nack(l).await
    }
    async fn release(&self, l: &[LeaseId]) -> Result<(), QueueError> {
        self.0.release(l).await
    }
    async fn dead_letter(&self, l: &[(LeaseId, String)], now: Timestamp) -> Result<(), QueueError> {
        self.0.dead_letter(l, now).await
    }
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        self.0.expire(now).await
    }
    async fn discard(&self, t: &[TaskRef]) -> Result<(), QueueError> {
        self.0.discard(t).await
    }
    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.0.list_dead(limit).await
    }
    async fn requeue_dead(
        &self,
        t: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        self.0.requeue_dead(t, now).await
    }
    async fn holds(&self, t: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        self.0.holds(t).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.0.depth().await
    }
    async fn ping(&self) -> Result<(), QueueError> {
        self.0.ping().await
    }
}

fn backends<S>(store: Arc<S>, queue: Arc<dyn LeaseQueue>) -> Backends
where
    S: JobStore + WorkerStore + DispatchOutbox + WebhookOutbox + RunLocks + 'static,
{
    Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store.clone(),
        webhooks: store.clone(),
        locks: store,
        queue,
        audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
    }
}

/// The job is accepted (committed with its entries in the outbox) although the enqueue never
/// happens; after a restart the sweeper's relay hands its tasks to the queue and they run.
#[tokio::test]
async fn crash_between_commit_and_enqueue_strands_nothing() {
    let Some(redis) = TestRedis::find("crash_between_commit_and_enqueue_strands_nothing").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("splai.db");

    let store = Arc::new(SqliteStore::new(
        SqliteDb::open(&path).await.unwrap(),
        Dispatch::Outbox,
    ));
    let queue: Arc<dyn LeaseQueue> = Arc::new(redis.queue(5).await);
    let before = Harness::new(
        backends(store.clone(), Arc::new(DiesBeforeEnqueue(queue.clone()))),
        None,
    );
    let job = a_job_with(vec![a_task("a", &[]), a_task("b", &[])]);
    let submitted = before.engine.submit(job).await.expect("the commit stands");
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
    assert_eq!(store.pending_dispatch(10).await.unwrap().len(), 2);
    drop((before, store));

    // The restart: the same database file, a queue that works.
    let store = Arc::new(SqliteStore::new(
        SqliteDb::open(&path).await.unwrap(),
        Dispatch::Outbox,
    ));
    let after = Harness::new(backends(store.clone(), queue.clone()), None);
    let swept = after.engine.sweep().await.unwrap();
    assert_eq!(swept.relayed, 2);
    assert!(store.pending_dispatch(10).await.unwrap().is_empty());
    let worker = after.cpu_worker("w-1").await;
    let claimed = after.claim(&worker, 10).await;
    assert_eq!(claimed.len(), 2);
    for a in &claimed {
        after.complete(a).await;
    }
    let job = after.engine.job(&submitted.job_id).await.unwrap();
    assert_eq!(job.status, Status::Completed);
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
}

/// The same crash with the job in DynamoDB: the outbox item committed with the job survives
/// the process, and a new process's sweep relays it.
#[cfg(feature = "aws")]
#[tokio::test]
async fn dynamodb_crash_between_commit_and_enqueue_strands_nothing() {
    use splai_shared::store::dynamodb::{DynamoDb, DynamoStore};
    use splai_shared::testing::aws::TestAws;

    let test = "dynamodb_crash_between_commit_and_enqueue_strands_nothing";
    let (Some(redis), Some(aws)) = (TestRedis::find(test).await, TestAws::find(test).await) else {
        return;
    };
    let table = TestAws::unique("splai");
    let store = Arc::new(DynamoStore::new(
        DynamoDb::open(&aws.sdk, &table, true).await.unwrap(),
    ));
    let queue: Arc<dyn LeaseQueue> = Arc::new(redis.queue(5).await);
    let before = Harness::new(
        backends(store.clone(), Arc::new(DiesBeforeEnqueue(queue.clone()))),
        None,
    );
    let job = a_job_with(vec![a_task("a", &[]), a_task("b", &[])]);
    let submitted = before.engine.submit(job).await.expect("the commit stands");
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
    assert_eq!(store.pending_dispatch(10).await.unwrap().len(), 2);
    drop((before, store));

    // The restart: a new client on the same table, a queue that works.
    let store = Arc::new(DynamoStore::new(
        DynamoDb::open(&aws.sdk, &table, false).await.unwrap(),
    ));
    let after = Harness::new(backends(store.clone(), queue.clone()), None);
    let swept = after.engine.sweep().await.unwrap();
    assert_eq!(swept.relayed, 2);
    assert!(store.pending_dispatch(10).await.unwrap().is_empty());
    let worker = after.cpu_worker("w-1").await;
    let claimed = after.claim(&worker, 10).await;
    assert_eq!(claimed.len(), 2);
    for a in &claimed {
        after.complete(a).await;
    }
    let job = after.engine.job(&submitted.job_id).await.unwrap();
    assert_eq!(job.status, Status::Completed);
    assert_eq!(queue.depth().await.unwrap(), QueueDepth::default());
}
