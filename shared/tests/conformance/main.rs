//! The engine conformance suite, run against every backend combination this crate builds.

use std::sync::Arc;

use splai_shared::backends;
use splai_shared::engine::Backends;
use splai_shared::testing::Harness;

async fn memory() -> Harness {
    Harness::new(backends::memory(), None)
}

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
            outbox: store,
            queue,
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
            outbox: store,
            queue,
        };
        Harness::new(b, Some(Box::new(dir)))
    }
}

/// Redis as the queue behind a store's outbox; `None` (the case is skipped) without Redis.
#[cfg(feature = "redis")]
mod redis_queue {
    use super::*;
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
        use splai_shared::store::Dispatch;
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
            outbox: store,
            queue: Arc::new(redis.queue(5).await),
        };
        Some(Harness::new(b, Some(Box::new((dir, redis)))))
    }
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
