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

    /// SQLite state with an external queue behind the outbox: the path Redis and SQS will take.
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
            outbox: store,
            queue,
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
            outbox: store,
            queue,
        };
        Some(Harness::new(b, Some(Box::new(t))))
    }
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
