//! Enqueueing: the upsert behind both `LeaseQueue::enqueue` and the store's `Direct` dispatch,
//! which writes ready entries in the store's own transaction.

use rusqlite::Connection;

use crate::domain::QueueEntry;
use crate::store::sqlite::{entry_columns, entry_params, entry_placeholders};

/// Upserts an entry bound by [`entry_params`]: an existing row keeps its `seq` (its FIFO
/// position) and loses any lease or dead-letter state.
pub(super) const UPSERT_ENTRY: &str = concat!(
    "INSERT INTO queue_entries (",
    entry_columns!(),
    ", state) VALUES (",
    entry_placeholders!(),
    ", 'pending')
     ON CONFLICT (job_id, task_id) DO UPDATE SET
         tenant = excluded.tenant, priority_rank = excluded.priority_rank,
         requires_gpu = excluded.requires_gpu, backend = excluded.backend,
         model = excluded.model, target_worker = excluded.target_worker,
         attempt = excluded.attempt, max_attempts = excluded.max_attempts,
         not_before_ms = excluded.not_before_ms, state = 'pending',
         lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL,
         dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL"
);

/// Upserts entries as pending, keyed by task: the store, not the queue, decides what is
/// runnable. Rows are written in input order, so new entries get `seq`s in input order and a
/// task listed twice ends as its last listing. Runs inside the caller's transaction; the
/// store calls it in `Direct` mode.
pub(crate) fn upsert_entries(conn: &Connection, entries: &[QueueEntry]) -> rusqlite::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut upsert = conn.prepare_cached(UPSERT_ENTRY)?;
    for e in entries {
        upsert.execute(entry_params(e))?;
    }
    Ok(())
}
