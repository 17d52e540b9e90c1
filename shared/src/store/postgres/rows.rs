//! Row <-> domain mapping, and queue entries as column arrays for `UNNEST`. Decoding failures
//! become `StoreError::Corrupt` naming the column.

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::db::PgError;
use crate::clock::{from_millis, to_millis};
use crate::domain::{
    Heartbeat, IdError, Priority, QueueEntry, Requirements, Timestamp, Worker, WorkerHealth,
    WorkerRegistration,
};
use crate::store::StoreError;

/// The queue-entry columns shared by `outbox` and `queue_entries`, in [`EntryArrays`] order.
/// A macro so that statements can `concat!` it into static SQL.
macro_rules! entry_columns {
    () => {
        "job_id, task_id, tenant, priority_rank, requires_gpu, backend, model, target_worker, \
         attempt, max_attempts, not_before_ms"
    };
}
pub(crate) use entry_columns;

/// `UNNEST` of the eleven [`EntryArrays`] parameters starting at `$1`, with ordinality `o`,
/// as `e(<entry columns>, o)`.
macro_rules! unnest_entries {
    () => {
        "UNNEST($1::text[], $2::text[], $3::text[], $4::int2[], $5::bool[], $6::text[], \
         $7::text[], $8::text[], $9::int4[], $10::int4[], $11::int8[]) WITH ORDINALITY \
         AS e(job_id, task_id, tenant, priority_rank, requires_gpu, backend, model, \
         target_worker, attempt, max_attempts, not_before_ms, o)"
    };
}
pub(crate) use unnest_entries;

/// Queue entries as one array per column, bound as `$1` to `$11` of [`unnest_entries!`].
#[derive(Default)]
pub(crate) struct EntryArrays<'a> {
    job_id: Vec<&'a str>,
    task_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    priority_rank: Vec<i16>,
    requires_gpu: Vec<bool>,
    backend: Vec<Option<&'a str>>,
    model: Vec<Option<&'a str>>,
    target_worker: Vec<Option<&'a str>>,
    attempt: Vec<i32>,
    max_attempts: Vec<i32>,
    not_before_ms: Vec<i64>,
}

impl<'a> EntryArrays<'a> {
    /// The entries' columns, in order.
    pub(crate) fn of<'e: 'a>(entries: impl IntoIterator<Item = &'e QueueEntry>) -> Self {
        let mut a = EntryArrays::default();
        for e in entries {
            a.job_id.push(e.job_id.as_str());
            a.task_id.push(e.task_id.as_str());
            a.tenant.push(e.tenant.as_str());
            a.priority_rank.push(rank(e.priority));
            a.requires_gpu.push(e.requirements.gpu);
            a.backend.push(e.requirements.backend.as_deref());
            a.model.push(e.requirements.model.as_deref());
            a.target_worker
                .push(e.requirements.worker_id.as_ref().map(|w| w.as_str()));
            a.attempt.push(count(e.attempt));
            a.max_attempts.push(count(e.max_attempts));
            a.not_before_ms.push(to_millis(e.not_before));
        }
        a
    }

    /// Binds the arrays as the query's first eleven parameters.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.job_id)
            .bind(self.task_id)
            .bind(self.tenant)
            .bind(self.priority_rank)
            .bind(self.requires_gpu)
            .bind(self.backend)
            .bind(self.model)
            .bind(self.target_worker)
            .bind(self.attempt)
            .bind(self.max_attempts)
            .bind(self.not_before_ms)
    }
}

/// A priority's claim rank as a `SMALLINT`.
pub(crate) fn rank(p: Priority) -> i16 {
    // Ranks are 0..=2.
    i16::try_from(p.rank()).unwrap_or(i16::MAX)
}

/// An attempt count as an `INTEGER`; counts beyond it saturate.
pub(crate) fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Reads an entry from a row holding [`entry_columns!`].
pub(crate) fn entry_from_row(row: &PgRow) -> Result<QueueEntry, PgError> {
    Ok(QueueEntry {
        job_id: id(row, "job_id")?,
        task_id: id(row, "task_id")?,
        tenant: id(row, "tenant")?,
        priority: Priority::from_rank(i64::from(row.try_get::<i16, _>("priority_rank")?)),
        requirements: Requirements {
            gpu: row.try_get("requires_gpu")?,
            backend: row.try_get("backend")?,
            model: row.try_get("model")?,
            worker_id: opt_id(row, "target_worker")?,
        },
        attempt: unsigned(row, "attempt")?,
        max_attempts: unsigned(row, "max_attempts")?,
        not_before: ts(row, "not_before_ms")?,
    })
}

/// Reads a worker from a `workers` row (JSON columns selected as text); health is derived from
/// `stale_before`.
pub(crate) fn worker_from_row(row: &PgRow, stale_before: Timestamp) -> Result<Worker, PgError> {
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
pub(crate) fn id<T>(row: &PgRow, col: &str) -> Result<T, PgError>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: String = row.try_get(col)?;
    T::try_from(s).map_err(|e| decode_err(col, e))
}

/// A nullable identifier column.
pub(crate) fn opt_id<T>(row: &PgRow, col: &str) -> Result<Option<T>, PgError>
where
    T: TryFrom<String, Error = IdError>,
{
    let s: Option<String> = row.try_get(col)?;
    s.map(T::try_from)
        .transpose()
        .map_err(|e| decode_err(col, e))
}

/// An `INTEGER` count column.
pub(crate) fn unsigned(row: &PgRow, col: &str) -> Result<u32, PgError> {
    let n: i32 = row.try_get(col)?;
    u32::try_from(n).map_err(|e| decode_err(col, e))
}

/// A unix-milliseconds column.
pub(crate) fn ts(row: &PgRow, col: &str) -> Result<Timestamp, PgError> {
    Ok(from_millis(row.try_get(col)?))
}

/// A JSON column, selected as text (`body::text AS body`).
pub(crate) fn json<T: DeserializeOwned>(row: &PgRow, col: &str) -> Result<T, PgError> {
    let text: &str = row.try_get(col)?;
    serde_json::from_str(text).map_err(|e| decode_err(col, e))
}

/// A value as JSON text for a `body`-like column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encode: {e}")))
}

/// A decoding failure of column `col`.
pub(crate) fn decode_err(col: &str, e: impl std::fmt::Display) -> PgError {
    PgError::Store(StoreError::Corrupt(format!("column {col}: {e}")))
}
