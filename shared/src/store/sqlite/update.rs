//! Updates of job aggregates: `update_jobs` and `renew_leases`, inside the caller's write
//! transaction. Each row is one execution of a cached prepared statement: in process, that
//! costs a few microseconds, so there is nothing to gain from multi-row statements.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};
use rusqlite::{Connection, OptionalExtension};

use super::cache::Staged;
use super::jobs::{load_job, load_tasks};
use super::rows::{entry_columns, entry_params, entry_placeholders, json, text, to_json};
use crate::clock::to_millis;
use crate::domain::{
    BeforeChange, JobId, JobRecord, LeaseId, QueueEntry, Status, Task, TaskId, Timestamp,
    WebhookDelivery, owed_deliveries,
};
use crate::store::diff::{TaskChange, task_changes};
use crate::store::{ApplyFn, Dispatch, LeaseRenewal};

// Updates set only the columns that can change: SQLite rewrites the entries of every index
// on a column named in SET, changed or not (a job's tenant and type never change; a task's
// position rarely does).

/// Rewrites a job row: job id, status, updated at (ms), body, finished at (ms).
const UPDATE_JOB: &str = "UPDATE jobs SET status = ?2, updated_at_ms = ?3, body = ?4,
        finished_at_ms = ?5
    WHERE job_id = ?1";

/// Inserts a task row: job id, task id, position, status, worker, lease, lease expiry (ms),
/// body.
pub(super) const INSERT_TASK: &str = "INSERT INTO tasks (job_id, task_id, position, status,
        worker_id, lease_id, lease_expires_ms, body)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Rewrites a task row in place, with [`INSERT_TASK`]'s parameters (`?3`, the unchanged
/// position, unused).
const UPDATE_TASK: &str = "UPDATE tasks SET status = ?4, worker_id = ?5, lease_id = ?6,
        lease_expires_ms = ?7, body = ?8
    WHERE job_id = ?1 AND task_id = ?2";

/// Rewrites a task row that moved, with [`INSERT_TASK`]'s parameters.
const MOVE_TASK: &str = "UPDATE tasks SET position = ?3, status = ?4, worker_id = ?5,
        lease_id = ?6, lease_expires_ms = ?7, body = ?8
    WHERE job_id = ?1 AND task_id = ?2";

/// Deletes a task row.
const DELETE_TASK: &str = "DELETE FROM tasks WHERE job_id = ?1 AND task_id = ?2";

/// A task's lease columns, for a renewal.
const LOAD_LEASE: &str =
    "SELECT status, lease_id, body FROM tasks WHERE job_id = ?1 AND task_id = ?2";

/// Sets a task's lease deadline and re-encoded body.
const EXTEND_LEASE: &str =
    "UPDATE tasks SET lease_expires_ms = ?3, body = ?4 WHERE job_id = ?1 AND task_id = ?2";

/// Appends an entry to the outbox.
const INSERT_OUTBOX: &str = concat!(
    "INSERT INTO outbox (",
    entry_columns!(),
    ") VALUES (",
    entry_placeholders!(),
    ")"
);

/// How a task row is written.
#[derive(Clone, Copy)]
enum TaskWrite {
    Insert,
    Update,
    Move,
}

impl TaskWrite {
    fn sql(self) -> &'static str {
        match self {
            TaskWrite::Insert => INSERT_TASK,
            TaskWrite::Update => UPDATE_TASK,
            TaskWrite::Move => MOVE_TASK,
        }
    }
}

/// A job row to write: its record's place in [`Prepared::after`], and its encoded body.
struct JobRow {
    record: usize,
    body: String,
}

/// A task row to write: its record's place, its position in the record, how it is written,
/// and its encoded body.
struct TaskRow {
    record: usize,
    position: usize,
    write: TaskWrite,
    body: String,
}

/// A batch of job changes, applied and encoded, ready to write: only the rows that differ
/// between the records as loaded and as left, the webhook deliveries the changes owe, the
/// entries they made ready and the leases they ack.
///
/// It can be made from the writer cache's committed records without holding the writer
/// ([`Prepared::is_current`] then decides, under the writer, whether it still applies): the
/// rules and the JSON encoding, about half of an update's time, then run beside other writes
/// instead of holding them up.
pub(super) struct Prepared {
    /// The records the changes started from, in the order the batch first named them.
    before: Vec<Arc<JobRecord>>,
    /// The same jobs, as the changes left them.
    after: Vec<JobRecord>,
    rows: Rows,
    hooks: Vec<WebhookDelivery>,
    ready: Vec<QueueEntry>,
    /// Leases whose entries the changes are done with (only with `Dispatch::Direct`).
    acks: Vec<LeaseId>,
}

/// The rows a batch writes, each naming its record by its place in [`Prepared::after`].
#[derive(Default)]
struct Rows {
    jobs: Vec<JobRow>,
    tasks: Vec<TaskRow>,
    gone: Vec<(usize, TaskId)>,
}

impl Prepared {
    /// Applies `apply` to each job among `ids` found in `loaded`, in order, and encodes what
    /// changed. A job listed twice is applied twice, the second time to the result of the
    /// first, as if it had been re-read.
    pub(super) fn new(
        loaded: &HashMap<JobId, Arc<JobRecord>>,
        ids: &[JobId],
        apply: &mut ApplyFn<'_>,
    ) -> rusqlite::Result<Prepared> {
        let mut slots: HashMap<&str, usize> = HashMap::with_capacity(loaded.len());
        let mut before = Vec::with_capacity(loaded.len());
        let mut after: Vec<JobRecord> = Vec::with_capacity(loaded.len());
        let mut ready = Vec::new();
        let mut acks = Vec::new();
        for id in ids {
            let slot = match slots.entry(id.as_str()) {
                Entry::Occupied(e) => *e.get(),
                Entry::Vacant(e) => match loaded.get(id.as_str()) {
                    Some(record) => {
                        before.push(record.clone());
                        after.push(JobRecord::clone(record));
                        *e.insert(after.len() - 1)
                    }
                    None => continue,
                },
            };
            let writes = apply(&mut after[slot]);
            ready.extend(writes.enqueue);
            acks.extend(writes.ack);
        }
        let mut rows = Rows::default();
        let mut hooks = Vec::new();
        for (i, (before, after)) in before.iter().zip(&after).enumerate() {
            rows.add(i, before, after)?;
            hooks.extend(owed_deliveries(&BeforeChange::of(before), after));
        }
        Ok(Prepared {
            before,
            after,
            rows,
            hooks,
            ready,
            acks,
        })
    }

    /// Whether every record the batch started from is still the one the transaction sees:
    /// no write changed those jobs since (a record the cache no longer holds counts as
    /// changed).
    pub(super) fn is_current(&self, cache: &Staged<'_>) -> bool {
        self.before.iter().all(|b| {
            cache
                .get(b.job.job_id.as_str())
                .is_some_and(|now| Arc::ptr_eq(&now, b))
        })
    }

    /// Writes the rows, the deliveries, the entries and the acks inside the caller's
    /// transaction, and keeps the records as left.
    #[tracing::instrument(skip_all, fields(jobs = self.after.len()))]
    pub(super) fn write(
        self,
        conn: &Connection,
        cache: &mut Staged<'_>,
        mode: Dispatch,
    ) -> rusqlite::Result<()> {
        let Rows { jobs, tasks, gone } = &self.rows;
        if !jobs.is_empty() {
            let mut update = conn.prepare_cached(UPDATE_JOB)?;
            for row in jobs {
                let job = &self.after[row.record].job;
                update.execute((
                    job.job_id.as_str(),
                    job.status.as_str(),
                    to_millis(job.updated_at),
                    &row.body,
                    job.finished_at.map(to_millis),
                ))?;
            }
        }
        for row in tasks {
            let record = &self.after[row.record];
            let task = &record.tasks[row.position];
            conn.prepare_cached(row.write.sql())?.execute((
                record.job.job_id.as_str(),
                task.task_id.as_str(),
                i64::try_from(row.position).unwrap_or(i64::MAX),
                task.status.as_str(),
                task.worker_id.as_ref().map(|w| w.as_str()),
                task.lease_id.as_ref().map(|l| l.as_str()),
                task.lease_expires.map(to_millis),
                &row.body,
            ))?;
        }
        if !gone.is_empty() {
            let mut delete = conn.prepare_cached(DELETE_TASK)?;
            for (record, task_id) in gone {
                let job_id = self.after[*record].job.job_id.as_str();
                delete.execute((job_id, task_id.as_str()))?;
            }
        }
        // Webhook deliveries commit with the change that owes them, or neither does.
        super::webhooks::insert(conn, &self.hooks)?;
        dispatch(conn, mode, &self.ready)?;
        // After the entries, as the engine would ack after the commit: a task that is both
        // acked and made ready again keeps its fresh entry.
        if !self.acks.is_empty() {
            debug_assert_eq!(
                mode,
                Dispatch::Direct,
                "acks come only with Direct dispatch"
            );
            crate::queue::sqlite::ack_entries(conn, &self.acks)?;
        }
        // Every job of the batch is now as this transaction left it.
        for record in self.after {
            cache.put(Arc::new(record));
        }
        Ok(())
    }
}

impl Rows {
    /// Adds the job row of record `record` if the job changed, and only the task rows that
    /// changed, moved, appeared or disappeared, each encoded.
    fn add(
        &mut self,
        record: usize,
        before: &JobRecord,
        after: &JobRecord,
    ) -> rusqlite::Result<()> {
        if before.job != after.job {
            self.jobs.push(JobRow {
                record,
                body: to_json(&after.job)?,
            });
        }
        let (changed, removed) = task_changes(before, after);
        for (position, task, change) in changed {
            let write = match change {
                TaskChange::Added => TaskWrite::Insert,
                TaskChange::Changed => TaskWrite::Update,
                TaskChange::Moved => TaskWrite::Move,
            };
            self.tasks.push(TaskRow {
                record,
                position,
                write,
                body: to_json(task)?,
            });
        }
        self.gone
            .extend(removed.into_iter().map(|t| (record, t.clone())));
        Ok(())
    }
}

/// The records of the jobs among `ids` that exist, by job id, as seen by `conn`'s transaction:
/// from the writer's cache when it holds them, else parsed from their rows.
fn load_records(
    conn: &Connection,
    cache: &Staged<'_>,
    ids: &[JobId],
) -> rusqlite::Result<HashMap<JobId, Arc<JobRecord>>> {
    let mut records = HashMap::with_capacity(ids.len());
    for id in ids {
        if records.contains_key(id.as_str()) {
            continue;
        }
        if let Some(kept) = cache.get(id.as_str()) {
            records.insert(id.clone(), kept);
        } else if let Some(job) = load_job(conn, id)? {
            let tasks = load_tasks(conn, id)?;
            records.insert(id.clone(), Arc::new(JobRecord { job, tasks }));
        }
    }
    Ok(records)
}

/// Applies `apply` to each existing job among `ids`, in order, and writes back what changed
/// plus the entries it returned, inside the caller's transaction (see [`Prepared::new`]).
#[tracing::instrument(skip_all, fields(jobs = ids.len()))]
pub(super) fn update_jobs(
    conn: &Connection,
    cache: &mut Staged<'_>,
    mode: Dispatch,
    ids: &[JobId],
    apply: &mut ApplyFn<'_>,
) -> rusqlite::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let loaded = load_records(conn, cache, ids)?;
    Prepared::new(&loaded, ids, apply)?.write(conn, cache, mode)
}

/// Per renewal, the task's status if the renewal names its current lease (and then, while it
/// runs, its lease is extended to `until`), else `None`. Inside the caller's transaction.
#[tracing::instrument(skip_all, fields(renewals = renewals.len()))]
pub(super) fn renew_leases(
    conn: &Connection,
    cache: &mut Staged<'_>,
    renewals: &[LeaseRenewal],
    until: Timestamp,
) -> rusqlite::Result<Vec<Option<Status>>> {
    let mut load = conn.prepare_cached(LOAD_LEASE)?;
    let mut extend = conn.prepare_cached(EXTEND_LEASE)?;
    let mut out = Vec::with_capacity(renewals.len());
    for r in renewals {
        let key = (r.task.job_id.as_str(), r.task.task_id.as_str());
        let found = load
            .query_row(key, |row| {
                let lease: Option<String> = row.get("lease_id")?;
                if lease.as_deref() != Some(r.lease_id.as_str()) {
                    return Ok(None);
                }
                let status: Status = text(row, "status")?
                    .parse()
                    .map_err(|e: String| super::rows::decode_err("status", e))?;
                let body = (status == Status::Running)
                    .then(|| json::<Task>(row, "body"))
                    .transpose()?;
                Ok(Some((status, body)))
            })
            .optional()?
            .flatten();
        let Some((status, body)) = found else {
            out.push(None);
            continue;
        };
        if let Some(mut task) = body {
            task.lease_expires = Some(until);
            extend.execute((key.0, key.1, to_millis(until), to_json(&task)?))?;
            // The kept record still has the old deadline.
            cache.forget(&r.task.job_id);
        }
        out.push(Some(status));
    }
    Ok(out)
}

/// Sends entries where the store's dispatch mode says, inside the caller's transaction;
/// entries keep their order (queue `seq`, outbox `id`).
pub(super) fn dispatch(
    conn: &Connection,
    mode: Dispatch,
    entries: &[QueueEntry],
) -> rusqlite::Result<()> {
    match mode {
        Dispatch::Direct => crate::queue::sqlite::upsert_entries(conn, entries),
        Dispatch::Outbox => {
            if entries.is_empty() {
                return Ok(());
            }
            let mut insert = conn.prepare_cached(INSERT_OUTBOX)?;
            for e in entries {
                insert.execute(entry_params(e))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteDb;

    /// Every statement finds its rows by key, one index probe per item, instead of scanning
    /// a table.
    #[tokio::test]
    async fn statements_seek_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        for sql in [
            "SELECT body FROM jobs WHERE job_id = ?1",
            "SELECT body FROM tasks WHERE job_id = ?1 ORDER BY position",
            UPDATE_JOB,
            INSERT_TASK,
            UPDATE_TASK,
            MOVE_TASK,
            DELETE_TASK,
            LOAD_LEASE,
            EXTEND_LEASE,
        ] {
            let plan = crate::store::sqlite::query_plan(&db, sql);
            assert!(!plan.contains("SCAN jobs"), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN tasks"), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        }
    }
}
