//! Streamed task output in SQLite (`task_chunks`): the lease check and the inserts run in one
//! write transaction, so a lease lost between them cannot slip a chunk in.

use rusqlite::{Connection, params};

use super::db::{SqliteDb, store_err};
use super::rows::id as row_id;
use crate::domain::{LeaseId, TaskChunk, TaskRef};
use crate::store::StoreError;

const CURRENT_LEASE: &str = "SELECT EXISTS (SELECT 1 FROM tasks
    WHERE job_id = ?1 AND task_id = ?2 AND lease_id = ?3 AND status = 'Running')";

const INSERT: &str = "INSERT OR IGNORE INTO task_chunks (job_id, task_id, lease_id, seq, text)
    VALUES (?1, ?2, ?3, ?4, ?5)";

pub(super) const AFTER: &str = "SELECT id, lease_id, seq, text FROM task_chunks
    WHERE job_id = ?1 AND task_id = ?2 AND id > ?3 ORDER BY id LIMIT (SELECT ?4)";

/// [`JobStore::append_chunks`](crate::store::JobStore::append_chunks).
pub(super) async fn append(
    db: &SqliteDb,
    task: &TaskRef,
    lease: &LeaseId,
    first_seq: u32,
    texts: &[String],
) -> Result<bool, StoreError> {
    db.write(|conn: &Connection| {
        let (job, id, lease) = (task.job_id.as_str(), task.task_id.as_str(), lease.as_str());
        let current: bool = conn.query_row(CURRENT_LEASE, params![job, id, lease], |r| r.get(0))?;
        if !current {
            return Ok(false);
        }
        let mut insert = conn.prepare_cached(INSERT)?;
        for (seq, text) in (first_seq..).zip(texts) {
            insert.execute(params![job, id, lease, seq, text])?;
        }
        Ok(true)
    })
    .await
    .map_err(store_err)
}

/// [`JobStore::chunks_after`](crate::store::JobStore::chunks_after).
pub(super) fn after(
    db: &SqliteDb,
    task: &TaskRef,
    after: i64,
    limit: usize,
) -> Result<Vec<TaskChunk>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    db.read(|tx| {
        let mut stmt = tx.prepare_cached(AFTER)?;
        let rows = stmt.query_map(
            params![task.job_id.as_str(), task.task_id.as_str(), after, limit],
            |r| {
                Ok(TaskChunk {
                    id: r.get("id")?,
                    lease_id: row_id(r, "lease_id")?,
                    seq: r.get("seq")?,
                    text: r.get("text")?,
                })
            },
        )?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })
    .map_err(store_err)
}
