//! Row <-> domain mapping. Decoding failures surface as `FromSqlConversionFailure`, so that
//! every error takes the one mapping path at the trait boundary (and ends up as `Corrupt`).

use rusqlite::types::Type;
use rusqlite::{Row, RowIndex};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{from_millis, to_millis};
use crate::domain::{
    Heartbeat, IdError, Priority, QueueEntry, Requirements, Timestamp, Worker, WorkerHealth,
    WorkerRegistration,
};

/// The queue-entry columns shared by `outbox` and `queue_entries`, in [`entry_params`] order.
/// A macro so that statements can `concat!` it into static SQL.
macro_rules! entry_columns {
    () => {
        "job_id, task_id, tenant, priority_rank, requires_gpu, backend, model, target_worker, \
         attempt, max_attempts, not_before_ms"
    };
}
pub(crate) use entry_columns;

/// `?1, .., ?11`: placeholders for [`entry_columns!`].
macro_rules! entry_placeholders {
    () => {
        "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11"
    };
}
pub(crate) use entry_placeholders;

/// The parameters of an entry's [`entry_columns!`].
pub(crate) type EntryParams<'a> = (
    &'a str,
    &'a str,
    &'a str,
    i64,
    bool,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    u32,
    u32,
    i64,
);

/// An entry's [`entry_columns!`] as statement parameters `?1` to `?11`.
pub(crate) fn entry_params(e: &QueueEntry) -> EntryParams<'_> {
    (
        e.job_id.as_str(),
        e.task_id.as_str(),
        e.tenant.as_str(),
        e.priority.rank(),
        e.requirements.gpu,
        e.requirements.backend.as_deref(),
        e.requirements.model.as_deref(),
        e.requirements.worker_id.as_ref().map(|w| w.as_str()),
        e.attempt,
        e.max_attempts,
        to_millis(e.not_before),
    )
}

/// How many columns [`entry_columns!`] names.
pub(crate) const ENTRY_COLUMNS: usize = column_count(entry_columns!());

/// The number of names in a comma-separated column list.
const fn column_count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let (mut n, mut i) = (1, 0);
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Reads an entry from a row holding [`entry_columns!`]: `job_id` is found by name, and the
/// others by their position after it (finding a column by name scans the statement's column
/// names, and doing it for every column of every claimed row was 1.5 % of the server's time
/// under load).
pub(crate) fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<QueueEntry> {
    entry_at(row, row.as_ref().column_index("job_id")?)
}

/// Reads an entry whose [`entry_columns!`] start at position `at` of the row.
pub(crate) fn entry_at(row: &Row<'_>, at: usize) -> rusqlite::Result<QueueEntry> {
    debug_assert!(
        entry_columns!().split(", ").enumerate().all(|(i, name)| row
            .as_ref()
            .column_name(at + i)
            .ok()
            == Some(name)),
        "the entry columns do not start at position {at}"
    );
    Ok(QueueEntry {
        job_id: id(row, at)?,
        task_id: id(row, at + 1)?,
        tenant: id(row, at + 2)?,
        priority: Priority::from_rank(row.get(at + 3)?),
        requirements: Requirements {
            gpu: row.get(at + 4)?,
            backend: row.get(at + 5)?,
            model: row.get(at + 6)?,
            worker_id: opt_id(row, at + 7)?,
        },
        attempt: row.get(at + 8)?,
        max_attempts: row.get(at + 9)?,
        not_before: ts(row, at + 10)?,
    })
}

/// Reads a worker from a `workers` row; health is derived from `stale_before`.
pub(crate) fn worker_from_row(row: &Row<'_>, stale_before: Timestamp) -> rusqlite::Result<Worker> {
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

/// A column found by name or by position; a decoding error names it either way.
pub(crate) trait Column: RowIndex + Copy {
    /// The column's name, for an error message.
    fn name(self, row: &Row<'_>) -> String;
}

impl Column for &str {
    fn name(self, _: &Row<'_>) -> String {
        self.to_owned()
    }
}

impl Column for usize {
    fn name(self, row: &Row<'_>) -> String {
        row.as_ref()
            .column_name(self)
            .map_or_else(|_| self.to_string(), str::to_owned)
    }
}

/// A validated identifier column.
pub(crate) fn id<T>(row: &Row<'_>, col: impl Column) -> rusqlite::Result<T>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: String = row.get(col)?;
    T::try_from(s).map_err(|e| decode_err(&col.name(row), e))
}

/// A nullable identifier column.
pub(crate) fn opt_id<T>(row: &Row<'_>, col: impl Column) -> rusqlite::Result<Option<T>>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: Option<String> = row.get(col)?;
    s.map(T::try_from)
        .transpose()
        .map_err(|e| decode_err(&col.name(row), e))
}

/// A unix-milliseconds column.
pub(crate) fn ts(row: &Row<'_>, col: impl Column) -> rusqlite::Result<Timestamp> {
    Ok(from_millis(row.get(col)?))
}

/// A text column, borrowed from the row.
pub(crate) fn text<'r>(row: &'r Row<'_>, col: &str) -> rusqlite::Result<&'r str> {
    row.get_ref(col)?.as_str().map_err(|e| decode_err(col, e))
}

/// A JSON column.
pub(crate) fn json<T: DeserializeOwned>(row: &Row<'_>, col: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text(row, col)?).map_err(|e| decode_err(col, e))
}

/// A value as JSON text for a `body`-like column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// A decoding failure of column `col`, or of a value that is no column (`col` says which).
pub(crate) fn decode_err(col: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, format!("column {col}: {e}").into())
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
