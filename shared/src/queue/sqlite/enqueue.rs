//! Enqueueing: the upsert behind both `LeaseQueue::enqueue` and the store's `Direct` dispatch,
//! which writes ready entries in the store's own transaction.

use sqlx::SqliteConnection;

use crate::domain::QueueEntry;
use crate::store::sqlite::{
    ENTRY_COLUMNS, batch_values_with, bind_entry, entry_columns, execute_batch,
};

/// Upserts `rows` entries, each bound by [`bind_entry`]: an existing row keeps its `seq` (its
/// FIFO position) and loses any lease or dead-letter state.
fn upsert_entries_sql(rows: usize) -> String {
    format!(
        "INSERT INTO queue_entries ({}, state) VALUES {}
         ON CONFLICT (job_id, task_id) DO UPDATE SET
             tenant = excluded.tenant, priority_rank = excluded.priority_rank,
             requires_gpu = excluded.requires_gpu, backend = excluded.backend,
             model = excluded.model, target_worker = excluded.target_worker,
             attempt = excluded.attempt, max_attempts = excluded.max_attempts,
             not_before_ms = excluded.not_before_ms, state = 'pending',
             lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL,
             dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL",
        entry_columns!(),
        batch_values_with(rows, ENTRY_COLUMNS, ", 'pending'")
    )
}

/// Upserts entries as pending, keyed by task: the store, not the queue, decides what is
/// runnable. Rows are written in input order, so new entries get `seq`s in input order and a
/// task listed twice ends as its last listing. Runs inside the caller's transaction; the
/// store calls it in `Direct` mode.
pub(crate) async fn upsert_entries(
    conn: &mut SqliteConnection,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    execute_batch(conn, entries, upsert_entries_sql, bind_entry).await
}
