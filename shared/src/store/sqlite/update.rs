//! Batched writes of job aggregates: `update_jobs` and `renew_leases` as a fixed number of
//! set-based statements over JSON arrays, whatever the batch size.
//!
//! The sqlx SQLite driver runs every statement as a round trip to its worker thread, which
//! costs more than the statement itself; so a batch loads all its rows with one SELECT per
//! table and writes each kind of change with one statement over `json_each(?)`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::{Row, SqliteConnection};

use super::rows::{
    SqliteQuery, bind_entry, entries_json, entry_columns, entry_values, json, to_json,
};
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, QueueEntry, Status, Task, TaskId, Timestamp};
use crate::store::{ApplyFn, Dispatch, LeaseRenewal};

/// The jobs named by `?1`, a JSON array of job ids.
const LOAD_JOBS: &str =
    "SELECT job_id, body FROM jobs WHERE job_id IN (SELECT value FROM json_each(?1))";

/// Their tasks, grouped by job and in planning order within each (`tasks_by_position`).
const LOAD_TASKS: &str = "SELECT job_id, body FROM tasks
    WHERE job_id IN (SELECT value FROM json_each(?1)) ORDER BY job_id, position";

/// Rewrites one job row, bound as a [`JobRow`].
const UPDATE_JOB: &str = "UPDATE jobs SET tenant = ?2, job_type = ?3, status = ?4,
        updated_at_ms = ?5, body = ?6
    WHERE job_id = ?1";

/// Rewrites job rows from a JSON array of [`JobRow`]s.
const UPDATE_JOBS: &str = "UPDATE jobs SET tenant = n.tenant, job_type = n.job_type,
        status = n.status, updated_at_ms = n.updated_at_ms, body = n.body
    FROM (SELECT value->>0 AS job_id, value->>1 AS tenant, value->>2 AS job_type,
                 value->>3 AS status, value->>4 AS updated_at_ms, value->>5 AS body
          FROM json_each(?1)) AS n
    WHERE jobs.job_id = n.job_id";

/// An upsert of task rows ([`TaskRow`]s) from `$source`.
macro_rules! upsert_tasks_from {
    ($source:literal) => {
        concat!(
            "INSERT INTO tasks (job_id, task_id, position, status, worker_id, lease_id,
                                lease_expires_ms, body) ",
            $source,
            " ON CONFLICT (job_id, task_id) DO UPDATE SET
                 position = excluded.position, status = excluded.status,
                 worker_id = excluded.worker_id, lease_id = excluded.lease_id,
                 lease_expires_ms = excluded.lease_expires_ms, body = excluded.body"
        )
    };
}

/// Writes one task row, new or not.
const UPSERT_TASK: &str = upsert_tasks_from!("VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");

/// Writes task rows, new or not, from a JSON array. `WHERE true` resolves the parser
/// ambiguity between a join's ON and the upsert's ON.
const UPSERT_TASKS: &str = upsert_tasks_from!(
    "SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6,
            value->>7
     FROM json_each(?1) WHERE true"
);

/// Deletes task rows named by a JSON array of `[job id, task id]`.
const DELETE_TASKS: &str = "DELETE FROM tasks
    WHERE (job_id, task_id) IN (SELECT value->>0, value->>1 FROM json_each(?1))";

/// Per renewal (`?1` a JSON array of `[job id, task id]`), its index and the task's lease
/// columns; renewals of missing tasks have no row.
const LOAD_LEASES: &str = "SELECT r.key AS k, tasks.status, tasks.lease_id, tasks.body
    FROM json_each(?1) AS r
    JOIN tasks ON tasks.job_id = r.value->>0 AND tasks.task_id = r.value->>1";

/// Sets the lease deadline `?2` of tasks, with their re-encoded bodies (`?1` a JSON array of
/// `[job id, task id, body]`).
const EXTEND_LEASES: &str = "UPDATE tasks SET lease_expires_ms = ?2, body = n.body
    FROM (SELECT value->>0 AS job_id, value->>1 AS task_id, value->>2 AS body
          FROM json_each(?1)) AS n
    WHERE tasks.job_id = n.job_id AND tasks.task_id = n.task_id";

/// A `jobs` row: job id, tenant, type, status, updated at (ms), body.
type JobRow<'a> = (&'a str, &'a str, &'a str, &'a str, i64, String);

/// A `tasks` row: job id, task id, position, status, worker, lease, lease expiry (ms), body.
type TaskRow<'a> = (
    &'a str,
    &'a str,
    i64,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<i64>,
    String,
);

/// The rows a batch writes: only what differs between the records as loaded and as left.
#[derive(Default)]
pub(super) struct Changes<'a> {
    jobs: Vec<JobRow<'a>>,
    tasks: Vec<TaskRow<'a>>,
    gone: Vec<(&'a str, &'a str)>,
}

impl<'a> Changes<'a> {
    /// Every task of a new record.
    pub(super) fn new_tasks(record: &'a JobRecord) -> Result<Self, sqlx::Error> {
        let mut changes = Changes::default();
        changes.add_new_tasks(record)?;
        Ok(changes)
    }

    /// Adds every task of a new record.
    pub(super) fn add_new_tasks(&mut self, record: &'a JobRecord) -> Result<(), sqlx::Error> {
        for (position, task) in record.tasks.iter().enumerate() {
            self.task(&record.job.job_id, position, task)?;
        }
        Ok(())
    }

    /// The job row if the job changed, and only the task rows that changed, moved, appeared
    /// or disappeared.
    fn diff(&mut self, before: &'a JobRecord, after: &'a JobRecord) -> Result<(), sqlx::Error> {
        let (job_id, job) = (&before.job.job_id, &after.job);
        if before.job != *job {
            self.jobs.push((
                job_id.as_str(),
                job.tenant.as_str(),
                &job.job_type,
                job.status.as_str(),
                to_millis(job.updated_at),
                to_json(job)?,
            ));
        }
        let old: HashMap<&TaskId, (usize, &Task)> = before
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (&t.task_id, (i, t)))
            .collect();
        for (position, task) in after.tasks.iter().enumerate() {
            if old.get(&task.task_id) != Some(&(position, task)) {
                self.task(job_id, position, task)?;
            }
        }
        let gone = before
            .tasks
            .iter()
            .filter(|t| after.task(&t.task_id).is_none());
        self.gone
            .extend(gone.map(|t| (job_id.as_str(), t.task_id.as_str())));
        Ok(())
    }

    fn task(
        &mut self,
        job_id: &'a JobId,
        position: usize,
        task: &'a Task,
    ) -> Result<(), sqlx::Error> {
        self.tasks.push((
            job_id.as_str(),
            task.task_id.as_str(),
            i64::try_from(position).unwrap_or(i64::MAX),
            task.status.as_str(),
            task.worker_id.as_ref().map(|w| w.as_str()),
            task.lease_id.as_ref().map(|l| l.as_str()),
            task.lease_expires.map(to_millis),
            to_json(task)?,
        ));
        Ok(())
    }

    /// Writes the rows, one statement per kind of change that has any.
    #[tracing::instrument(skip_all)]
    pub(super) async fn write(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        if let Some(q) = self.jobs_query()? {
            q.execute(&mut *conn).await?;
        }
        if let Some(q) = self.tasks_query()? {
            q.execute(&mut *conn).await?;
        }
        if !self.gone.is_empty() {
            let q = sqlx::query(DELETE_TASKS).bind(to_json(&self.gone)?);
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    // A lone row binds directly: for a single row the JSON form costs more (parsing it, and
    // the set-up of `UPDATE ... FROM` or `INSERT ... SELECT`) than the round trip it saves.
    // A batch of one job is common: a worker that claims one task at a time.

    fn jobs_query(&self) -> Result<Option<SqliteQuery<'_>>, sqlx::Error> {
        Ok(match self.jobs.as_slice() {
            [] => None,
            [(id, tenant, job_type, status, updated_at, body)] => Some(
                sqlx::query(UPDATE_JOB)
                    .bind(*id)
                    .bind(*tenant)
                    .bind(*job_type)
                    .bind(*status)
                    .bind(*updated_at)
                    .bind(body.as_str()),
            ),
            many => Some(sqlx::query(UPDATE_JOBS).bind(to_json(&many)?)),
        })
    }

    fn tasks_query(&self) -> Result<Option<SqliteQuery<'_>>, sqlx::Error> {
        Ok(match self.tasks.as_slice() {
            [] => None,
            [(job_id, task_id, position, status, worker, lease, expires, body)] => Some(
                sqlx::query(UPSERT_TASK)
                    .bind(*job_id)
                    .bind(*task_id)
                    .bind(*position)
                    .bind(*status)
                    .bind(*worker)
                    .bind(*lease)
                    .bind(*expires)
                    .bind(body.as_str()),
            ),
            many => Some(sqlx::query(UPSERT_TASKS).bind(to_json(&many)?)),
        })
    }
}

/// The records of the jobs among `ids` that exist, by job id, as seen by `conn`'s transaction.
#[tracing::instrument(skip_all)]
async fn load_records(
    conn: &mut SqliteConnection,
    ids: &[JobId],
) -> Result<HashMap<String, JobRecord>, sqlx::Error> {
    let ids = to_json(&ids.iter().map(JobId::as_str).collect::<Vec<_>>())?;
    let mut records = HashMap::new();
    for row in sqlx::query(LOAD_JOBS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
    {
        let job: Job = json(&row, "body")?;
        let tasks = Vec::new();
        records.insert(row.try_get("job_id")?, JobRecord { job, tasks });
    }
    for row in sqlx::query(LOAD_TASKS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
    {
        let job_id: &str = row.try_get("job_id")?;
        if let Some(record) = records.get_mut(job_id) {
            record.tasks.push(json(&row, "body")?);
        }
    }
    Ok(records)
}

/// Applies `apply` to each existing job among `ids`, in order, and writes back what changed
/// plus the entries it returned, inside the caller's transaction. A job listed twice is
/// applied twice, the second time to the result of the first, as if it had been re-read.
#[tracing::instrument(skip_all, fields(jobs = ids.len()))]
pub(super) async fn update_jobs(
    conn: &mut SqliteConnection,
    mode: Dispatch,
    ids: &[JobId],
    apply: &mut ApplyFn<'_>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let loaded = load_records(conn, ids).await?;
    let mut after: HashMap<&str, JobRecord> = HashMap::with_capacity(loaded.len());
    // First-seen order, so that the statements are the same for the same batch.
    let mut order = Vec::with_capacity(loaded.len());
    let mut ready = Vec::new();
    for id in ids {
        let record = match after.entry(id.as_str()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match loaded.get(id.as_str()) {
                Some(before) => {
                    order.push(id.as_str());
                    e.insert(before.clone())
                }
                None => continue,
            },
        };
        ready.extend(apply(record));
    }
    let mut changes = Changes::default();
    for id in order {
        changes.diff(&loaded[id], &after[id])?;
    }
    changes.write(conn).await?;
    dispatch(conn, mode, &ready).await
}

/// Per renewal, the task's status if the renewal names its current lease (and then, while it
/// runs, its lease is extended to `until`), else `None`. Inside the caller's transaction.
#[tracing::instrument(skip_all, fields(renewals = renewals.len()))]
pub(super) async fn renew_leases(
    conn: &mut SqliteConnection,
    renewals: &[LeaseRenewal],
    until: Timestamp,
) -> Result<Vec<Option<Status>>, sqlx::Error> {
    let mut out = vec![None; renewals.len()];
    if renewals.is_empty() {
        return Ok(out);
    }
    let tasks: Vec<_> = renewals
        .iter()
        .map(|r| (r.task.job_id.as_str(), r.task.task_id.as_str()))
        .collect();
    let rows = sqlx::query(LOAD_LEASES)
        .bind(to_json(&tasks)?)
        .fetch_all(&mut *conn)
        .await?;
    let mut extend = Vec::new();
    for row in &rows {
        let k: usize = row.try_get::<i64, _>("k")?.try_into().unwrap_or(usize::MAX);
        let Some(r) = renewals.get(k) else { continue };
        if row.try_get::<Option<&str>, _>("lease_id")? != Some(r.lease_id.as_str()) {
            continue;
        }
        let status: Status = row
            .try_get::<&str, _>("status")?
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
        if status == Status::Running {
            let mut task: Task = json(row, "body")?;
            task.lease_expires = Some(until);
            extend.push((tasks[k].0, tasks[k].1, to_json(&task)?));
        }
        out[k] = Some(status);
    }
    if !extend.is_empty() {
        sqlx::query(EXTEND_LEASES)
            .bind(to_json(&extend)?)
            .bind(to_millis(until))
            .execute(&mut *conn)
            .await?;
    }
    Ok(out)
}

/// One outbox entry, bound by [`bind_entry`].
const INSERT_OUTBOX_ENTRY: &str = concat!(
    "INSERT INTO outbox (",
    entry_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
);

/// The outbox entries of an [`entries_json`] array, in array order.
const INSERT_OUTBOX: &str = concat!(
    "INSERT INTO outbox (",
    entry_columns!(),
    ") SELECT ",
    entry_values!(),
    " FROM json_each(?1) ORDER BY key"
);

/// Sends entries where the store's dispatch mode says, inside the caller's transaction, in one
/// statement; entries keep their order (queue `seq`, outbox `id`).
pub(super) async fn dispatch(
    conn: &mut SqliteConnection,
    mode: Dispatch,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    let q = match (mode, entries) {
        (_, []) => return Ok(()),
        (Dispatch::Direct, _) => {
            return crate::queue::sqlite::upsert_entries(conn, entries).await;
        }
        // One entry binds directly, as in `Changes::write`.
        (Dispatch::Outbox, [one]) => bind_entry(sqlx::query(INSERT_OUTBOX_ENTRY), one),
        (Dispatch::Outbox, many) => sqlx::query(INSERT_OUTBOX).bind(entries_json(many)?),
    };
    q.execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;
    use crate::store::sqlite::SqliteDb;

    /// Every batch statement seeks its rows by key, one index probe per item, instead of
    /// scanning a table.
    #[tokio::test]
    async fn batch_statements_seek_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        for sql in [
            LOAD_JOBS,
            LOAD_TASKS,
            UPDATE_JOB,
            UPDATE_JOBS,
            UPSERT_TASK,
            UPSERT_TASKS,
            DELETE_TASKS,
            LOAD_LEASES,
            EXTEND_LEASES,
        ] {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(db.reader())
                .await
                .unwrap();
            let plan: Vec<String> = rows.iter().map(|r| r.get("detail")).collect();
            let plan = plan.join("\n");
            assert!(!plan.contains("SCAN jobs"), "{sql}\n{plan}");
            assert!(!plan.contains("SCAN tasks"), "{sql}\n{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}\n{plan}");
        }
    }
}
