//! The SQLite audit log. An append reads the head and inserts the new event in one write
//! transaction: this process's writes take turns on the one writer connection, and other
//! processes on the same file wait for SQLite's write lock (`BEGIN IMMEDIATE`), so no two
//! appends ever read the same head and the chain cannot fork.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, ToSql};

use super::db::{SqliteDb, store_err};
use crate::clock::{from_millis, to_millis};
use crate::domain::{AuditEvent, GENESIS_HASH, NewAuditEvent, TenantId};
use crate::store::{AuditFilter, AuditLog, StoreError};

/// The columns [`event_from_row`] reads, in order.
const COLUMNS: &str = "id, action, actor, tenant, remote_addr, resource, payload_hash, requested, \
                       result, details, created_at_ms, prev_hash, event_hash";

/// The audit log in a SQLite database, beside the job store.
#[derive(Debug, Clone)]
pub struct SqliteAuditLog {
    db: SqliteDb,
}

impl SqliteAuditLog {
    /// The audit log of `db`.
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn append(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        self.db
            .write(move |conn| append_in(conn, event))
            .await
            .map_err(store_err)
    }

    async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut params: Vec<Box<dyn ToSql>> = Vec::new();
        let mut push = |clause: &str, value: Box<dyn ToSql>| {
            params.push(value);
            sql.push_str(&format!(" AND {clause} ?{}", params.len()));
        };
        if let Some(a) = &filter.action {
            push("action =", Box::new(a.clone()));
        }
        if let Some(a) = &filter.actor {
            push("actor =", Box::new(a.clone()));
        }
        if let Some(t) = &filter.tenant {
            push("tenant =", Box::new(t.as_str().to_owned()));
        }
        if let Some(r) = &filter.result {
            push("result =", Box::new(r.clone()));
        }
        if let Some(f) = filter.from {
            push("created_at_ms >=", Box::new(to_millis(f)));
        }
        if let Some(t) = filter.to {
            push("created_at_ms <", Box::new(to_millis(t)));
        }
        sql.push_str(&format!(
            " ORDER BY id DESC LIMIT {} OFFSET {}",
            filter.limit, filter.offset
        ));
        self.db
            .read(|tx| {
                let mut stmt = tx.prepare(&sql)?;
                let refs: Vec<&dyn ToSql> = params.iter().map(AsRef::as_ref).collect();
                let rows = stmt.query_map(refs.as_slice(), event_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(store_err)
    }

    async fn chain_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        self.db
            .read(|tx| {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE id > ?1 ORDER BY id LIMIT (SELECT ?2)"
                ))?;
                let rows = stmt.query_map((after, limit), event_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(store_err)
    }
}

/// Reads the head and inserts the event after it, on the writer connection.
fn append_in(conn: &Connection, event: NewAuditEvent) -> rusqlite::Result<AuditEvent> {
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT id, event_hash FROM audit_events ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (id, prev) = head.map_or((1, GENESIS_HASH.to_owned()), |(id, h)| (id + 1, h));
    let e = AuditEvent::chain(id, event, prev);
    let ev = &e.event;
    conn.prepare_cached(
        "INSERT INTO audit_events (id, action, actor, tenant, remote_addr, resource, payload_hash,
             requested, result, details, created_at_ms, prev_hash, event_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(rusqlite::params![
        e.id,
        ev.action,
        ev.actor,
        ev.tenant.as_ref().map(TenantId::as_str),
        ev.remote_addr,
        ev.resource,
        ev.payload_hash,
        ev.requested,
        ev.result,
        ev.details.to_string(),
        to_millis(ev.created_at),
        e.prev_hash,
        e.event_hash,
    ])?;
    Ok(e)
}

/// An event from a row of [`COLUMNS`].
fn event_from_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let bad = |i: usize, e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
    };
    let tenant = r
        .get::<_, Option<String>>(3)?
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| bad(3, Box::new(e)))?;
    let details: String = r.get(9)?;
    Ok(AuditEvent {
        id: r.get(0)?,
        event: NewAuditEvent {
            action: r.get(1)?,
            actor: r.get(2)?,
            tenant,
            remote_addr: r.get(4)?,
            resource: r.get(5)?,
            payload_hash: r.get(6)?,
            requested: r.get(7)?,
            result: r.get(8)?,
            details: serde_json::from_str(&details).map_err(|e| bad(9, Box::new(e)))?,
            created_at: from_millis(r.get(10)?),
        },
        prev_hash: r.get(11)?,
        event_hash: r.get(12)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::testing::audit as contract;

    async fn a_log() -> (SqliteAuditLog, TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        (SqliteAuditLog::new(db), dir)
    }

    #[tokio::test]
    async fn append_list_filter_and_page() {
        let (log, _dir) = a_log().await;
        contract::append_list_filter_and_page(&log).await;
    }

    #[tokio::test]
    async fn verify_accepts_an_intact_chain() {
        let (log, _dir) = a_log().await;
        contract::verify_accepts_an_intact_chain(&log).await;
    }

    /// An UPDATE straight in the database is found by verify.
    #[tokio::test]
    async fn verify_finds_a_row_updated_in_the_database() {
        let (log, _dir) = a_log().await;
        let db = log.db.clone();
        contract::verify_finds_a_tampered_event(&log, |id| async move {
            db.write(|c| {
                c.execute(
                    "UPDATE audit_events SET result = 'denied' WHERE id = ?1",
                    [id],
                )
            })
            .await
            .unwrap();
        })
        .await;
    }

    /// Two databases handles on one file (two writer connections, as two processes have)
    /// appending at once still build one chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_from_two_handles_keep_one_chain() {
        let (a, dir) = a_log().await;
        let b = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        contract::concurrent_appends_keep_one_chain(Arc::new(a), Arc::new(SqliteAuditLog::new(b)))
            .await;
    }
}
