//! The SQLite run locks (`run_locks`): one upsert that only takes a free, lapsed or own lock.

use async_trait::async_trait;

use super::SqliteStore;
use super::db::store_err;
use crate::clock::to_millis;
use crate::domain::Timestamp;
use crate::store::{RunLocks, StoreError};

/// Name, holder, now, until: inserts, or takes over a lock whose deadline passed or that the
/// holder already has; no row changes when another holder has it.
const TRY_LOCK: &str = "INSERT INTO run_locks (name, holder, until_ms) VALUES (?1, ?2, ?4)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
    WHERE run_locks.until_ms <= ?3 OR run_locks.holder = excluded.holder";

const UNLOCK: &str = "DELETE FROM run_locks WHERE name = ?1 AND holder = ?2";

#[async_trait]
impl RunLocks for SqliteStore {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        self.db
            .write(|tx| {
                let n = tx.prepare_cached(TRY_LOCK)?.execute((
                    name,
                    holder,
                    to_millis(now),
                    to_millis(until),
                ))?;
                Ok(n == 1)
            })
            .await
            .map_err(store_err)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.db
            .write(|tx| {
                tx.prepare_cached(UNLOCK)?.execute((name, holder))?;
                Ok(())
            })
            .await
            .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;
    use crate::store::Dispatch;
    use crate::store::sqlite::SqliteDb;

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let store = SqliteStore::new(db, Dispatch::Direct);
        crate::testing::locks::one_holder_at_a_time(&store).await;
    }
}
