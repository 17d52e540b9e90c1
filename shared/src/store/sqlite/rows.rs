//! Row <-> domain mapping. Decoding failures surface as `sqlx::Error::Decode`, so that every
//! error takes the one mapping path at the trait boundary (and ends up as `Corrupt`).

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite};

use crate::clock::{from_millis, to_millis};
use crate::domain::{
    Heartbeat, IdError, Priority, QueueEntry, Requirements, Timestamp, Worker, WorkerHealth,
    WorkerRegistration,
};

/// A SQLite query with positional arguments.
pub(crate) type SqliteQuery<'q> = Query<'q, Sqlite, SqliteArguments>;

/// The queue-entry columns shared by `outbox` and `queue_entries`, in [`bind_entry`] order.
/// A macro so that statements can `concat!` it into static SQL.
macro_rules! entry_columns {
    () => {
        "job_id, task_id, tenant, priority_rank, requires_gpu, backend, model, target_worker, \
         attempt, max_attempts, not_before_ms"
    };
}
pub(crate) use entry_columns;

/// How many [`entry_columns!`] there are.
pub(crate) const ENTRY_COLUMNS: usize = 11;

/// Binds an entry's [`entry_columns!`] as the next eleven parameters.
pub(crate) fn bind_entry<'q>(q: SqliteQuery<'q>, e: &'q QueueEntry) -> SqliteQuery<'q> {
    q.bind(e.job_id.as_str())
        .bind(e.task_id.as_str())
        .bind(e.tenant.as_str())
        .bind(e.priority.rank())
        .bind(e.requirements.gpu)
        .bind(e.requirements.backend.as_deref())
        .bind(e.requirements.model.as_deref())
        .bind(e.requirements.worker_id.as_ref().map(|w| w.as_str()))
        .bind(e.attempt)
        .bind(e.max_attempts)
        .bind(to_millis(e.not_before))
}

/// Reads an entry from a row holding [`entry_columns!`].
pub(crate) fn entry_from_row(row: &SqliteRow) -> Result<QueueEntry, sqlx::Error> {
    Ok(QueueEntry {
        job_id: id(row, "job_id")?,
        task_id: id(row, "task_id")?,
        tenant: id(row, "tenant")?,
        priority: Priority::from_rank(row.try_get("priority_rank")?),
        requirements: Requirements {
            gpu: row.try_get("requires_gpu")?,
            backend: row.try_get("backend")?,
            model: row.try_get("model")?,
            worker_id: opt_id(row, "target_worker")?,
        },
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        not_before: ts(row, "not_before_ms")?,
    })
}

/// Reads a worker from a `workers` row; health is derived from `stale_before`.
pub(crate) fn worker_from_row(
    row: &SqliteRow,
    stale_before: Timestamp,
) -> Result<Worker, sqlx::Error> {
    let last_heartbeat = ts(row, "last_heartbeat_ms")?;
    let registration: WorkerRegistration = json(row, "registration")?;
    let load: Heartbeat = json(row, "load_figures")?;
    Ok(Worker {
        worker_id: id(row, "worker_id")?,
        registration,
        load,
        health: if last_heartbeat < stale_before {
            WorkerHealth::Stale
        } else {
            WorkerHealth::Healthy
        },
        registered_at: ts(row, "registered_at_ms")?,
        last_heartbeat,
    })
}

/// A validated identifier column.
pub(crate) fn id<T>(row: &SqliteRow, col: &str) -> Result<T, sqlx::Error>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: String = row.try_get(col)?;
    T::try_from(s).map_err(|e| decode_err(col, e))
}

/// A nullable identifier column.
pub(crate) fn opt_id<T>(row: &SqliteRow, col: &str) -> Result<Option<T>, sqlx::Error>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: Option<String> = row.try_get(col)?;
    s.map(T::try_from)
        .transpose()
        .map_err(|e| decode_err(col, e))
}

/// A unix-milliseconds column.
pub(crate) fn ts(row: &SqliteRow, col: &str) -> Result<Timestamp, sqlx::Error> {
    Ok(from_millis(row.try_get(col)?))
}

/// A JSON column.
pub(crate) fn json<T: DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T, sqlx::Error> {
    let s: &str = row.try_get(col)?;
    serde_json::from_str(s).map_err(|e| decode_err(col, e))
}

/// A value as JSON text for a `body`-like column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, sqlx::Error> {
    serde_json::to_string(value).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

fn decode_err(col: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("column {col}: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Millisecond timestamps survive the integer column exactly, including before the epoch.
    #[test]
    fn millis_round_trip() {
        for ms in [0_i64, 1, 1_767_225_600_123, -1_500] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }
}
