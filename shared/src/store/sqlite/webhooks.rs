//! The SQLite webhook outbox (`webhook_deliveries`): rows inserted by `update_jobs` in its
//! write transaction, leased and recorded in write transactions of their own.

use async_trait::async_trait;
use rusqlite::{Connection, Row};

use super::SqliteStore;
use super::db::store_err;
use super::rows::{decode_err, id, json, text, to_json};
use crate::clock::{from_millis, to_millis};
use crate::domain::{JobId, Timestamp, WebhookAttempt, WebhookDelivery};
use crate::store::{AttemptOutcome, StoreError, WebhookOutbox};

/// The columns [`delivery_from_row`] reads.
const COLUMNS: &str = "delivery_id, job_id, tenant, event, url, body, state, attempts, \
                       next_attempt_ms, created_at_ms, attempt_log";

const INSERT: &str = "INSERT INTO webhook_deliveries (delivery_id, job_id, tenant, event, url,
        body, state, attempts, next_attempt_ms, created_at_ms, attempt_log)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// Leases due, unleased rows: now, lease until, token, limit.
pub(super) const CLAIM: &str = "UPDATE webhook_deliveries SET lease_token = ?3, lease_until_ms = ?2
    WHERE delivery_id IN (
        SELECT delivery_id FROM webhook_deliveries
        WHERE state = 'pending' AND next_attempt_ms <= ?1
          AND (lease_until_ms IS NULL OR lease_until_ms <= ?1)
        ORDER BY next_attempt_ms LIMIT (SELECT ?4))
    RETURNING delivery_id, job_id, tenant, event, url, body, state, attempts,
        next_attempt_ms, created_at_ms, attempt_log";

/// Whether any delivery is due and unleased at ?1.
const ANY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_ms <= ?1
      AND (lease_until_ms IS NULL OR lease_until_ms <= ?1))";

/// Records an attempt under a lease: id, token, attempt (JSON), state, next attempt.
const RECORD: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1,
        attempt_log = json_insert(attempt_log, '$[#]', json(?3)), state = ?4,
        next_attempt_ms = ?5, lease_token = NULL, lease_until_ms = NULL
    WHERE delivery_id = ?1 AND lease_token = ?2";

/// Writes deliveries inside the caller's transaction.
pub(super) fn insert(conn: &Connection, deliveries: &[WebhookDelivery]) -> rusqlite::Result<()> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(INSERT)?;
    for d in deliveries {
        stmt.execute((
            &d.delivery_id,
            d.job_id.as_str(),
            d.tenant.as_str(),
            &d.event,
            &d.url,
            &d.body,
            d.state.as_str(),
            d.attempts,
            d.next_attempt_at.map(to_millis),
            to_millis(d.created_at),
            to_json(&d.attempt_log)?,
        ))?;
    }
    Ok(())
}

fn delivery_from_row(row: &Row<'_>) -> rusqlite::Result<WebhookDelivery> {
    Ok(WebhookDelivery {
        delivery_id: row.get("delivery_id")?,
        job_id: id(row, "job_id")?,
        tenant: id(row, "tenant")?,
        event: row.get("event")?,
        url: row.get("url")?,
        body: row.get("body")?,
        state: text(row, "state")?
            .parse()
            .map_err(|e: String| decode_err("state", e))?,
        attempts: row.get("attempts")?,
        next_attempt_at: row
            .get::<_, Option<i64>>("next_attempt_ms")?
            .map(from_millis),
        created_at: from_millis(row.get("created_at_ms")?),
        attempt_log: json(row, "attempt_log")?,
    })
}

#[async_trait]
impl WebhookOutbox for SqliteStore {
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Every gateway asks every sweep: a reader answers "nothing due" without taking the
        // one writer connection.
        let due: bool = self
            .db
            .read(|tx| {
                tx.prepare_cached(ANY_DUE)?
                    .query_row([to_millis(now)], |r| r.get(0))
            })
            .map_err(store_err)?;
        if !due {
            return Ok(Vec::new());
        }
        self.db
            .write(|tx| {
                let mut rows: Vec<WebhookDelivery> = tx
                    .prepare_cached(CLAIM)?
                    .query_map(
                        (to_millis(now), to_millis(lease_until), token, limit),
                        delivery_from_row,
                    )?
                    .collect::<rusqlite::Result<_>>()?;
                // RETURNING gives no order; hand them out oldest due first.
                rows.sort_by_key(|d| d.next_attempt_at);
                Ok(rows)
            })
            .await
            .map_err(store_err)
    }

    async fn record_webhook_attempt(
        &self,
        delivery_id: &str,
        token: &str,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let attempt = to_json(attempt).map_err(store_err)?;
        let (state, next) = outcome.state_and_next();
        self.db
            .write(|tx| {
                let n = tx.prepare_cached(RECORD)?.execute((
                    delivery_id,
                    token,
                    &attempt,
                    state.as_str(),
                    next.map(to_millis),
                ))?;
                Ok(n == 1)
            })
            .await
            .map_err(store_err)
    }

    async fn job_webhooks(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_deliveries WHERE job_id = ?1 \
             ORDER BY created_at_ms, delivery_id"
        );
        self.db
            .read(|tx| {
                tx.prepare_cached(&sql)?
                    .query_map([job_id.as_str()], delivery_from_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Dispatch;
    use crate::store::sqlite::SqliteDb;
    use crate::testing::webhooks as contract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        (dir, SqliteStore::new(db, Dispatch::Direct))
    }

    #[tokio::test]
    async fn terminal_change_writes_one_delivery() {
        let (_dir, s) = store().await;
        contract::terminal_change_writes_one_delivery(&s).await;
    }

    #[tokio::test]
    async fn claims_are_leased_due_and_fenced() {
        let (_dir, s) = store().await;
        contract::claims_are_leased_due_and_fenced(&s).await;
    }

    #[tokio::test]
    async fn outcomes_end_or_reschedule_deliveries() {
        let (_dir, s) = store().await;
        contract::outcomes_end_or_reschedule_deliveries(&s).await;
    }

    /// Two handles on one file (two writer connections, as two processes have).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_hand_out_each_delivery_once() {
        let (dir, a) = store().await;
        let b = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let b = SqliteStore::new(b, Dispatch::Direct);
        contract::concurrent_claims_hand_out_each_delivery_once(
            std::sync::Arc::new(a),
            std::sync::Arc::new(b),
        )
        .await;
    }

    #[tokio::test]
    async fn task_events_only_when_asked() {
        let (_dir, s) = store().await;
        contract::task_events_only_when_asked(&s).await;
    }

    /// Claims walk the partial due index instead of scanning every delivery ever made.
    #[tokio::test]
    async fn claim_uses_the_due_index() {
        let (_dir, s) = store().await;
        for sql in [CLAIM, ANY_DUE] {
            let plan = crate::store::sqlite::query_plan(&s.db, sql);
            assert!(plan.contains("webhook_due"), "{plan}");
        }
    }
}
