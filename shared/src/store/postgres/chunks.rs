//! Streamed task output in Postgres (`task_chunks`): the lease check and the insert are one
//! statement, the task row share-locked so its lease cannot change in between.

use sqlx::Row;

use super::rows::id as row_id;
use super::{PgDb, store_err};
use crate::domain::{LeaseId, TaskChunk, TaskRef};
use crate::store::StoreError;

const APPEND: &str = "WITH current AS (
        SELECT 1 FROM tasks
        WHERE job_id = $1 AND task_id = $2 AND lease_id = $3 AND status = 'Running'
        FOR SHARE),
    added AS (
        INSERT INTO task_chunks (job_id, task_id, lease_id, seq, text)
        SELECT $1, $2, $3, $4::int + (s.i - 1)::int, s.t
        FROM unnest($5::text[]) WITH ORDINALITY AS s (t, i)
        WHERE EXISTS (SELECT 1 FROM current)
        ON CONFLICT DO NOTHING)
    SELECT EXISTS (SELECT 1 FROM current) AS current";

const AFTER: &str = "SELECT id, lease_id, seq, text FROM task_chunks
    WHERE job_id = $1 AND task_id = $2 AND id > $3 ORDER BY id LIMIT $4";

/// [`JobStore::append_chunks`](crate::store::JobStore::append_chunks).
pub(super) async fn append(
    db: &PgDb,
    task: &TaskRef,
    lease: &LeaseId,
    first_seq: u32,
    texts: &[String],
) -> Result<bool, StoreError> {
    let first = i32::try_from(first_seq).unwrap_or(i32::MAX);
    on_conn!(db, "chunks_append", |conn| {
        let row = sqlx::query(APPEND)
            .bind(task.job_id.as_str())
            .bind(task.task_id.as_str())
            .bind(lease.as_str())
            .bind(first)
            .bind(texts)
            .fetch_one(conn)
            .await?;
        Ok(row.try_get::<bool, _>("current")?)
    })
    .map_err(store_err)
}

/// [`JobStore::chunks_after`](crate::store::JobStore::chunks_after).
pub(super) async fn after(
    db: &PgDb,
    task: &TaskRef,
    after: i64,
    limit: usize,
) -> Result<Vec<TaskChunk>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    on_conn!(db, "chunks_after", |conn| {
        let rows = sqlx::query(AFTER)
            .bind(task.job_id.as_str())
            .bind(task.task_id.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(conn)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskChunk {
                    id: r.try_get("id")?,
                    lease_id: row_id(r, "lease_id")?,
                    seq: u32::try_from(r.try_get::<i32, _>("seq")?).unwrap_or(0),
                    text: r.try_get("text")?,
                })
            })
            .collect()
    })
    .map_err(store_err)
}
