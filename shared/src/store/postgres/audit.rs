//! The Postgres audit log. An append takes a transaction-scoped advisory lock before it reads
//! the head, so appends from every pooled connection of every gateway process take turns, and
//! no two ever read the same head: the chain cannot fork. The lock goes with the transaction.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::{PgDb, PgError, store_err};
use crate::clock::{from_millis, to_millis};
use crate::domain::{AuditEvent, GENESIS_HASH, NewAuditEvent, TenantId};
use crate::store::{AuditFilter, AuditLog, StoreError};

/// The advisory lock key appends take (`'audit'` as a number; no other code uses it).
const APPEND_LOCK: i64 = 0x61_7564_6974;

/// The columns [`event_from_row`] reads.
macro_rules! columns {
    () => {
        "id, action, actor, tenant, remote_addr, resource, payload_hash, requested, result, \
         details, created_at_ms, prev_hash, event_hash"
    };
}

/// The audit log in a Postgres database, beside the job store.
#[derive(Debug, Clone)]
pub struct PostgresAuditLog {
    db: PgDb,
}

impl PostgresAuditLog {
    /// The audit log of `db`.
    pub fn new(db: PgDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AuditLog for PostgresAuditLog {
    async fn append(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        in_tx!(self.db, "audit_append", |conn| {
            append_in(conn, event.clone()).await
        })
        .map_err(store_err)
    }

    async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        on_conn!(self.db, "audit_list", |conn| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM audit_events",
                " WHERE ($1::text IS NULL OR action = $1)",
                " AND ($2::text IS NULL OR actor = $2)",
                " AND ($3::text IS NULL OR tenant = $3)",
                " AND ($4::text IS NULL OR result = $4)",
                " AND ($5::bigint IS NULL OR created_at_ms >= $5)",
                " AND ($6::bigint IS NULL OR created_at_ms < $6)",
                " ORDER BY id DESC LIMIT $7 OFFSET $8"
            ))
            .bind(filter.action.as_deref())
            .bind(filter.actor.as_deref())
            .bind(filter.tenant.as_ref().map(TenantId::as_str))
            .bind(filter.result.as_deref())
            .bind(filter.from.map(to_millis))
            .bind(filter.to.map(to_millis))
            .bind(i64::from(filter.limit))
            .bind(i64::from(filter.offset))
            .fetch_all(conn)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
        .map_err(store_err)
    }

    async fn chain_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        on_conn!(self.db, "audit_chain", |conn| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2"
            ))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(conn)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
        .map_err(store_err)
    }
}

/// Locks the chain, reads its head and inserts the event after it.
async fn append_in(conn: &mut PgConnection, event: NewAuditEvent) -> Result<AuditEvent, PgError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK)
        .execute(&mut *conn)
        .await?;
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT id, event_hash FROM audit_events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (id, prev) = head.map_or((1, GENESIS_HASH.to_owned()), |(id, h)| (id + 1, h));
    let e = AuditEvent::chain(id, event, prev);
    let ev = &e.event;
    sqlx::query(
        "INSERT INTO audit_events (id, action, actor, tenant, remote_addr, resource, payload_hash,
             requested, result, details, created_at_ms, prev_hash, event_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(e.id)
    .bind(&ev.action)
    .bind(&ev.actor)
    .bind(ev.tenant.as_ref().map(TenantId::as_str))
    .bind(ev.remote_addr.as_deref())
    .bind(&ev.resource)
    .bind(ev.payload_hash.as_deref())
    .bind(ev.requested.map(i64::from))
    .bind(&ev.result)
    .bind(ev.details.to_string())
    .bind(to_millis(ev.created_at))
    .bind(&e.prev_hash)
    .bind(&e.event_hash)
    .execute(&mut *conn)
    .await?;
    Ok(e)
}

/// An event from a row of [`columns!`].
fn event_from_row(r: &PgRow) -> Result<AuditEvent, PgError> {
    let corrupt = |what: String| PgError::Store(StoreError::Corrupt(what));
    let tenant = r
        .try_get::<Option<String>, _>("tenant")?
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| corrupt(format!("audit tenant: {e}")))?;
    let details: String = r.try_get("details")?;
    let requested = r
        .try_get::<Option<i64>, _>("requested")?
        .map(u32::try_from)
        .transpose()
        .map_err(|e| corrupt(format!("audit requested: {e}")))?;
    Ok(AuditEvent {
        id: r.try_get("id")?,
        event: NewAuditEvent {
            action: r.try_get("action")?,
            actor: r.try_get("actor")?,
            tenant,
            remote_addr: r.try_get("remote_addr")?,
            resource: r.try_get("resource")?,
            payload_hash: r.try_get("payload_hash")?,
            requested,
            result: r.try_get("result")?,
            details: serde_json::from_str(&details)
                .map_err(|e| corrupt(format!("audit details: {e}")))?,
            created_at: from_millis(r.try_get("created_at_ms")?),
        },
        prev_hash: r.try_get("prev_hash")?,
        event_hash: r.try_get("event_hash")?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::audit as contract;
    use crate::testing::postgres::TestDb;

    #[tokio::test]
    async fn append_list_filter_and_page() {
        let Some(t) = TestDb::create("audit_append_list_filter_and_page").await else {
            return;
        };
        contract::append_list_filter_and_page(&PostgresAuditLog::new(t.db.clone())).await;
    }

    #[tokio::test]
    async fn verify_accepts_an_intact_chain() {
        let Some(t) = TestDb::create("audit_verify_accepts_an_intact_chain").await else {
            return;
        };
        contract::verify_accepts_an_intact_chain(&PostgresAuditLog::new(t.db.clone())).await;
    }

    /// An UPDATE straight in the database is found by verify.
    #[tokio::test]
    async fn verify_finds_a_row_updated_in_the_database() {
        let Some(t) = TestDb::create("audit_verify_finds_a_row_updated_in_the_database").await
        else {
            return;
        };
        let log = PostgresAuditLog::new(t.db.clone());
        let db = t.db.clone();
        contract::verify_finds_a_tampered_event(&log, |id| async move {
            sqlx::query("UPDATE audit_events SET details = '{\"forged\":true}' WHERE id = $1")
                .bind(id)
                .execute(db.pool())
                .await
                .unwrap();
        })
        .await;
    }

    /// Two pools on one database (as two gateway processes hold) appending at once still
    /// build one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_from_two_pools_keep_one_chain() {
        let Some(t) = TestDb::create("audit_concurrent_appends_from_two_pools").await else {
            return;
        };
        let other = PgDb::open(t.url(), 4).await.unwrap();
        contract::concurrent_appends_keep_one_chain(
            Arc::new(PostgresAuditLog::new(t.db.clone())),
            Arc::new(PostgresAuditLog::new(other)),
        )
        .await;
    }
}
