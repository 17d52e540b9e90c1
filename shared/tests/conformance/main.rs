//! The engine conformance suite, run against every backend combination this crate builds.

mod artifacts;

use std::sync::Arc;

use splai_shared::backends;
use splai_shared::engine::Backends;
use splai_shared::testing::Harness;

async fn memory() -> Harness {
    Harness::new(backends::memory(), None)
}

#[cfg(feature = "aws")]
mod sqs;

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use splai_shared::queue::memory::MemoryLeaseQueue;
    use splai_shared::queue::sqlite::SqliteLeaseQueue;
    use splai_shared::store::Dispatch;
    use splai_shared::store::sqlite::{SqliteDb, SqliteStore};

    async fn sqlite_db() -> (SqliteDb, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = SqliteDb::open(&dir.path().join("splai.db"))
            .await
            .expect("open sqlite");
        (db, dir)
    }

    /// SQLite with the queue in the same database: jobs and their entries commit together.
    pub async fn sqlite_store_queue() -> Harness {
        let (db, dir) = sqlite_db().await;
        let store = Arc::new(SqliteStore::new(db.clone(), Dispatch::Direct));
        let queue = Arc::new(SqliteLeaseQueue::new(db));
        let b = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue,
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Harness::new(b, Some(Box::new(dir)))
    }

    /// SQLite state with an external queue behind the outbox: the path Redis and SQS take.
    pub async fn sqlite_outbox_memory_queue() -> Harness {
        let (db, dir) = sqlite_db().await;
        let store = Arc::new(SqliteStore::new(db, Dispatch::Outbox));
        let queue = Arc::new(MemoryLeaseQueue::new());
        let b = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue,
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Harness::new(b, Some(Box::new(dir)))
    }
}

/// Redis as the queue behind a store's outbox; `None` (the case is skipped) without Redis.
#[cfg(feature = "redis")]
mod redis_queue {
    use super::*;
    use splai_shared::store::Dispatch;
    use splai_shared::testing::redis::TestRedis;

    /// The memory store (always dispatching through its outbox) with a Redis queue.
    pub async fn memory_redis() -> Option<Harness> {
        let redis = TestRedis::find("conformance memory_redis").await?;
        let mut b = backends::memory();
        b.queue = Arc::new(redis.queue(5).await);
        Some(Harness::new(b, Some(Box::new(redis))))
    }

    /// SQLite state whose outbox relays to a Redis queue.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite_redis() -> Option<Harness> {
        use splai_shared::store::sqlite::{SqliteDb, SqliteStore};
        let redis = TestRedis::find("conformance sqlite_redis").await?;
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
            queue: Arc::new(redis.queue(5).await),
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Some(Harness::new(b, Some(Box::new((dir, redis)))))
    }

    /// Postgres state whose outbox relays to a Redis queue.
    #[cfg(feature = "postgres")]
    pub async fn postgres_redis() -> Option<Harness> {
        use splai_shared::store::postgres::PostgresStore;
        use splai_shared::testing::postgres::TestDb;
        let redis = TestRedis::find("conformance postgres_redis").await?;
        let t = TestDb::create("conformance postgres_redis").await?;
        let store = Arc::new(PostgresStore::new(t.db.clone(), Dispatch::Outbox));
        let b = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue: Arc::new(redis.queue(5).await),
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Some(Harness::new(b, Some(Box::new((t, redis)))))
    }
}

/// DynamoDB state whose outbox relays to a Redis queue; `None` (skipped) without the AWS
/// emulator or Redis.
#[cfg(all(feature = "aws", feature = "redis"))]
mod dynamodb {
    use super::*;
    use splai_shared::store::dynamodb::{DynamoAuditLog, DynamoDb, DynamoStore};
    use splai_shared::testing::aws::TestAws;
    use splai_shared::testing::redis::TestRedis;

    pub async fn dynamodb_redis() -> Option<Harness> {
        let aws = TestAws::find("conformance dynamodb_redis").await?;
        let redis = TestRedis::find("conformance dynamodb_redis").await?;
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
            queue: Arc::new(redis.queue(5).await),
            audit: Arc::new(DynamoAuditLog::new(db)),
        };
        Some(Harness::new(b, Some(Box::new(redis))))
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use splai_shared::queue::memory::MemoryLeaseQueue;
    use splai_shared::queue::postgres::PostgresLeaseQueue;
    use splai_shared::store::Dispatch;
    use splai_shared::store::postgres::PostgresStore;
    use splai_shared::testing::postgres::TestDb;

    /// Postgres with the queue in the same database (`FOR UPDATE SKIP LOCKED`): jobs and their
    /// entries commit together. `None` (skipped) without a reachable server.
    pub async fn postgres_store_queue() -> Option<Harness> {
        let t = TestDb::create("conformance postgres_store").await?;
        let store = Arc::new(PostgresStore::new(t.db.clone(), Dispatch::Direct));
        let queue = Arc::new(PostgresLeaseQueue::new(t.db.clone()));
        let b = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue,
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Some(Harness::new(b, Some(Box::new(t))))
    }

    /// Postgres state with an external queue behind the outbox.
    pub async fn postgres_outbox_memory_queue() -> Option<Harness> {
        let t = TestDb::create("conformance postgres_outbox").await?;
        let store = Arc::new(PostgresStore::new(t.db.clone(), Dispatch::Outbox));
        let queue = Arc::new(MemoryLeaseQueue::new());
        let b = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue,
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        Some(Harness::new(b, Some(Box::new(t))))
    }
}

/// A job submitted through one gateway wakes a worker long-polling another gateway at once
/// (NOTIFY, the queue's listener, the engine's wake seam), not at its next poll.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_dispatch_wakes_long_polls_of_other_gateways() {
    use std::time::Duration;

    use splai_shared::clock::SystemClock;
    use splai_shared::engine::{Engine, EngineConfig};
    use splai_shared::planner::{Planner, PlannerConfig};
    use splai_shared::queue::postgres::PostgresLeaseQueue;
    use splai_shared::store::Dispatch;
    use splai_shared::store::postgres::{PgDb, PostgresStore};
    use splai_shared::testing::postgres::TestDb;

    let Some(t) = TestDb::create("postgres_dispatch_wakes_long_polls_of_other_gateways").await
    else {
        return;
    };
    let gateway = |db: PgDb| {
        let store = Arc::new(PostgresStore::new(db.clone(), Dispatch::Direct));
        let backends = Backends {
            jobs: store.clone(),
            workers: store.clone(),
            outbox: store.clone(),
            webhooks: store.clone(),
            locks: store,
            queue: Arc::new(PostgresLeaseQueue::new(db)),
            audit: Arc::new(splai_shared::store::memory::MemoryAuditLog::new()),
        };
        let planner = Planner::new(PlannerConfig {
            llm_endpoint: None,
            llm_api_key: None,
            llm_timeout: Duration::from_secs(1),
            max_tasks: 100,
        });
        // A poll interval far longer than the test: only a wake-up can end the wait early.
        let config = EngineConfig {
            poll_interval: Duration::from_secs(60),
            ..EngineConfig::default()
        };
        Arc::new(Engine::new(
            backends,
            planner,
            Arc::new(SystemClock),
            config,
        ))
    };
    let a = gateway(t.db.clone());
    let b = gateway(PgDb::connect(t.url(), 3).await.unwrap());
    let worker = splai_shared::domain::WorkerId::parse("w-b").unwrap();
    let registration = splai_shared::domain::WorkerRegistration {
        backends: vec!["echo".into()],
        cpu: 4.0,
        ..Default::default()
    };
    b.register_worker(&worker, &registration).await.unwrap();
    let poll = {
        let (b, worker) = (b.clone(), worker.clone());
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let got = b.assign(&worker, 1, Duration::from_secs(20)).await.unwrap();
            (got, started.elapsed())
        })
    };
    // Let the long poll and the listeners settle, then submit through the other gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = a
        .submit(splai_shared::testing::a_single_task_job())
        .await
        .unwrap();
    let (got, waited) = poll.await.unwrap();
    assert_eq!(got.len(), 1, "the other gateway's worker got the task");
    assert_eq!(got[0].job_id, submitted.job_id);
    assert!(
        waited < Duration::from_secs(10),
        "woken, not polled: {waited:?}"
    );
}

#[cfg(feature = "postgres")]
mod postgres_store {
    splai_shared::engine_suite!(super::postgres::postgres_store_queue);
}

#[cfg(feature = "postgres")]
mod postgres_outbox {
    splai_shared::engine_suite!(super::postgres::postgres_outbox_memory_queue);
}

mod memory_memory {
    splai_shared::engine_suite!(super::memory);
}

#[cfg(feature = "sqlite")]
mod sqlite_store {
    splai_shared::engine_suite!(super::sqlite::sqlite_store_queue);
}

#[cfg(feature = "sqlite")]
mod sqlite_outbox {
    splai_shared::engine_suite!(super::sqlite::sqlite_outbox_memory_queue);
}

#[cfg(feature = "redis")]
mod memory_redis {
    splai_shared::engine_suite!(super::redis_queue::memory_redis);
}

#[cfg(all(feature = "sqlite", feature = "redis"))]
mod sqlite_redis {
    splai_shared::engine_suite!(super::redis_queue::sqlite_redis);
}

#[cfg(all(feature = "postgres", feature = "redis"))]
mod postgres_redis {
    splai_shared::engine_suite!(super::redis_queue::postgres_redis);
}

#[cfg(all(feature = "aws", feature = "redis"))]
mod dynamodb_redis {
    splai_shared::engine_suite!(super::dynamodb::dynamodb_redis);
}
