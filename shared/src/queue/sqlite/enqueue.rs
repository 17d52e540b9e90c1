//! Enqueueing: the upsert behind both `LeaseQueue::enqueue` and the store's `Direct` dispatch,
//! which writes ready entries in the store's own transaction.

use sqlx::SqliteConnection;

use crate::domain::QueueEntry;
use crate::store::sqlite::{bind_entry, entries_json, entry_columns, entry_values};

/// An upsert of queue entries from `$source`, rows of [`entry_columns!`]: an existing row
/// keeps its `seq` (its FIFO position) and loses any lease or dead-letter state.
macro_rules! upsert_entries_from {
    ($source:expr) => {
        concat!(
            "INSERT INTO queue_entries (",
            entry_columns!(),
            ", state) ",
            $source,
            " ON CONFLICT (job_id, task_id) DO UPDATE SET
                 tenant = excluded.tenant, priority_rank = excluded.priority_rank,
                 requires_gpu = excluded.requires_gpu, backend = excluded.backend,
                 model = excluded.model, target_worker = excluded.target_worker,
                 attempt = excluded.attempt, max_attempts = excluded.max_attempts,
                 not_before_ms = excluded.not_before_ms, state = 'pending',
                 lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL,
                 dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL"
        )
    };
}

/// Upserts one entry, bound by [`bind_entry`].
const UPSERT_ENTRY: &str =
    upsert_entries_from!("VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending')");

/// Upserts the entries of an [`entries_json`] array, in array order. `WHERE true` resolves the
/// parser ambiguity between a join's ON and the upsert's ON.
const UPSERT_ENTRIES: &str = upsert_entries_from!(concat!(
    "SELECT ",
    entry_values!(),
    ", 'pending' FROM json_each(?1) WHERE true ORDER BY key"
));

/// Upserts entries as pending, keyed by task: the store, not the queue, decides what is
/// runnable. Rows are written in input order, so new entries get `seq`s in input order and a
/// task listed twice ends as its last listing. Runs inside the caller's transaction; the
/// store calls it in `Direct` mode.
pub(crate) async fn upsert_entries(
    conn: &mut SqliteConnection,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    // One entry binds directly: for a single row the JSON form costs more (parsing it, and
    // the INSERT ... SELECT set-up) than the round trip it saves.
    let q = match entries {
        [] => return Ok(()),
        [one] => bind_entry(sqlx::query(UPSERT_ENTRY), one),
        many => sqlx::query(UPSERT_ENTRIES).bind(entries_json(many)?),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}
