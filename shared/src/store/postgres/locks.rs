//! The Postgres run locks (`run_locks`): one upsert that only takes a free, lapsed or own lock.

use async_trait::async_trait;

use super::PostgresStore;
use super::db::store_err;
use crate::clock::to_millis;
use crate::domain::Timestamp;
use crate::store::{RunLocks, StoreError};

/// Name, holder, now, until: inserts, or takes over a lock whose deadline passed or that the
/// holder already has (so a retried statement whose answer was lost still succeeds); no row
/// changes when another holder has it.
const TRY_LOCK: &str = "INSERT INTO run_locks (name, holder, until_ms) VALUES ($1, $2, $4)
    ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
    WHERE run_locks.until_ms <= $3 OR run_locks.holder = EXCLUDED.holder";

const UNLOCK: &str = "DELETE FROM run_locks WHERE name = $1 AND holder = $2";

#[async_trait]
impl RunLocks for PostgresStore {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        on_conn!(self.db, "try_lock", |conn| {
            let done = sqlx::query(TRY_LOCK)
                .bind(name)
                .bind(holder)
                .bind(to_millis(now))
                .bind(to_millis(until))
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .map_err(store_err)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        on_conn!(self.db, "unlock", |conn| {
            sqlx::query(UNLOCK)
                .bind(name)
                .bind(holder)
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::PostgresStore;
    use crate::store::Dispatch;
    use crate::testing::postgres::TestDb;

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let Some(t) = TestDb::create("run_locks_one_holder_at_a_time").await else {
            return;
        };
        let store = PostgresStore::new(t.db.clone(), Dispatch::Direct);
        crate::testing::locks::one_holder_at_a_time(&store).await;
    }
}
