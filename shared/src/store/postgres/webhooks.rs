//! The Postgres webhook outbox (`webhook_deliveries`): rows inserted by `update_jobs` in its
//! transaction; claims lease due rows with `FOR UPDATE SKIP LOCKED`, so gateways sharing the
//! database never hand out one delivery twice at once.

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::db::{PgError, store_err};
use super::rows::{decode_err, id, json, to_json};
use crate::clock::{from_millis, to_millis};
use crate::domain::{JobId, Timestamp, WebhookAttempt, WebhookDelivery};
use crate::store::{AttemptOutcome, StoreError, WebhookOutbox};

/// What [`delivery_from_row`] reads.
const RETURNING: &str = "delivery_id, job_id, tenant, event, url, body, state, attempts, \
                         next_attempt_ms, created_at_ms, attempt_log::text AS attempt_log";

/// Writes deliveries from arrays, in order.
const INSERT: &str = "INSERT INTO webhook_deliveries (delivery_id, job_id, tenant, event, url,
        body, state, attempts, next_attempt_ms, created_at_ms, attempt_log)
    SELECT d, j, t, e, u, b, s, 0, n, c, '[]'::jsonb
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::int8[], $9::int8[]) AS r(d, j, t, e, u, b, s, n, c)";

/// Records an attempt under a lease: id, token, attempt (JSON), state, next attempt.
const RECORD: &str = "UPDATE webhook_deliveries SET attempts = attempts + 1,
        attempt_log = attempt_log || jsonb_build_array($3::jsonb), state = $4,
        next_attempt_ms = $5, lease_token = NULL, lease_until_ms = NULL
    WHERE delivery_id = $1 AND lease_token = $2";

/// Writes deliveries inside the caller's transaction: one statement for the batch.
pub(super) async fn insert(
    conn: &mut PgConnection,
    deliveries: &[WebhookDelivery],
) -> Result<(), PgError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    sqlx::query(INSERT)
        .bind(column(deliveries, |d| d.delivery_id.as_str()))
        .bind(column(deliveries, |d| d.job_id.as_str()))
        .bind(column(deliveries, |d| d.tenant.as_str()))
        .bind(column(deliveries, |d| d.event.as_str()))
        .bind(column(deliveries, |d| d.url.as_str()))
        .bind(column(deliveries, |d| d.body.as_str()))
        .bind(column(deliveries, |d| d.state.as_str()))
        .bind(
            deliveries
                .iter()
                .map(|d| d.next_attempt_at.map(to_millis))
                .collect::<Vec<_>>(),
        )
        .bind(
            deliveries
                .iter()
                .map(|d| to_millis(d.created_at))
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    Ok(())
}

/// One text column of a batch, for an `UNNEST` parameter.
fn column<'a>(
    deliveries: &'a [WebhookDelivery],
    f: impl Fn(&'a WebhookDelivery) -> &'a str,
) -> Vec<&'a str> {
    deliveries.iter().map(f).collect()
}

fn delivery_from_row(row: &PgRow) -> Result<WebhookDelivery, PgError> {
    use sqlx::Row;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(WebhookDelivery {
        delivery_id: row.try_get("delivery_id")?,
        job_id: id(row, "job_id")?,
        tenant: id(row, "tenant")?,
        event: row.try_get("event")?,
        url: row.try_get("url")?,
        body: row.try_get("body")?,
        state: row
            .try_get::<&str, _>("state")?
            .parse()
            .map_err(|e: String| decode_err("state", e))?,
        attempts: u32::try_from(attempts).map_err(|e| decode_err("attempts", e))?,
        next_attempt_at: row
            .try_get::<Option<i64>, _>("next_attempt_ms")?
            .map(from_millis),
        created_at: from_millis(row.try_get("created_at_ms")?),
        attempt_log: json(row, "attempt_log")?,
    })
}

#[async_trait]
impl WebhookOutbox for PostgresStore {
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // One statement: the subquery skips rows another claimer has locked right now, and
        // the lease columns keep them from everyone else until the lease runs out.
        let sql = format!(
            "UPDATE webhook_deliveries SET lease_token = $3, lease_until_ms = $2
             WHERE delivery_id = ANY(ARRAY(
                 SELECT delivery_id FROM webhook_deliveries
                 WHERE state = 'pending' AND next_attempt_ms <= $1
                   AND (lease_until_ms IS NULL OR lease_until_ms <= $1)
                 ORDER BY next_attempt_ms LIMIT $4 FOR UPDATE SKIP LOCKED))
             RETURNING {RETURNING}"
        );
        let mut rows = on_conn!(self.db, "claim_webhooks", |conn| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(to_millis(now))
                .bind(to_millis(lease_until))
                .bind(token)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            rows.iter()
                .map(delivery_from_row)
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(store_err)?;
        rows.sort_by_key(|d| d.next_attempt_at);
        Ok(rows)
    }

    async fn record_webhook_attempt(
        &self,
        delivery_id: &str,
        token: &str,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let attempt = to_json(attempt)?;
        let (state, next) = outcome.state_and_next();
        on_conn!(self.db, "record_webhook_attempt", |conn| {
            let done = sqlx::query(RECORD)
                .bind(delivery_id)
                .bind(token)
                .bind(&attempt)
                .bind(state.as_str())
                .bind(next.map(to_millis))
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .map_err(store_err)
    }

    async fn job_webhooks(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        let sql = format!(
            "SELECT {RETURNING} FROM webhook_deliveries WHERE job_id = $1
             ORDER BY created_at_ms, delivery_id"
        );
        on_conn!(self.db, "job_webhooks", |conn| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(job_id.as_str())
                .fetch_all(&mut *conn)
                .await?;
            rows.iter()
                .map(delivery_from_row)
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(store_err)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Dispatch;
    use crate::store::postgres::PostgresStore;
    use crate::testing::postgres::TestDb;
    use crate::testing::webhooks as contract;

    #[tokio::test]
    async fn terminal_change_writes_one_delivery() {
        let Some(t) = TestDb::create("webhooks_terminal_change_writes_one_delivery").await else {
            return;
        };
        let s = PostgresStore::new(t.db.clone(), Dispatch::Direct);
        contract::terminal_change_writes_one_delivery(&s).await;
    }

    #[tokio::test]
    async fn claims_are_leased_due_and_fenced() {
        let Some(t) = TestDb::create("webhooks_claims_are_leased_due_and_fenced").await else {
            return;
        };
        let s = PostgresStore::new(t.db.clone(), Dispatch::Direct);
        contract::claims_are_leased_due_and_fenced(&s).await;
    }

    #[tokio::test]
    async fn outcomes_end_or_reschedule_deliveries() {
        let Some(t) = TestDb::create("webhooks_outcomes_end_or_reschedule_deliveries").await else {
            return;
        };
        let s = PostgresStore::new(t.db.clone(), Dispatch::Direct);
        contract::outcomes_end_or_reschedule_deliveries(&s).await;
    }

    #[tokio::test]
    async fn task_events_only_when_asked() {
        let Some(t) = TestDb::create("webhooks_task_events_only_when_asked").await else {
            return;
        };
        let s = PostgresStore::new(t.db.clone(), Dispatch::Direct);
        contract::task_events_only_when_asked(&s).await;
    }

    /// Two pools on one database, as two gateway processes hold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_hand_out_each_delivery_once() {
        let Some(t) = TestDb::create("webhooks_concurrent_claims").await else {
            return;
        };
        let other = crate::store::postgres::PgDb::open(t.url(), 4)
            .await
            .unwrap();
        contract::concurrent_claims_hand_out_each_delivery_once(
            std::sync::Arc::new(PostgresStore::new(t.db.clone(), Dispatch::Direct)),
            std::sync::Arc::new(PostgresStore::new(other, Dispatch::Direct)),
        )
        .await;
    }
}
