//! Batched writes of job aggregates: `update_jobs` and `renew_leases` as a few statements
//! whatever the batch size.
//!
//! The sqlx SQLite driver runs every statement as a round trip to its worker thread, which
//! costs more than the statement itself; so a batch loads all its rows with one SELECT per
//! table (the ids bound as one JSON array) and writes each kind of change with multi-row
//! statements of bound values (`batch.rs`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::{Row, SqliteConnection};

use super::batch::{self, values};
use super::rows::{ENTRY_COLUMNS, bind_entry, entry_columns, json, to_json};
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, QueueEntry, Status, Task, TaskId, Timestamp};
use crate::store::{ApplyFn, Dispatch, LeaseRenewal};

/// The jobs named by `?1`, a JSON array of job ids.
const LOAD_JOBS: &str =
    "SELECT job_id, body FROM jobs WHERE job_id IN (SELECT value FROM json_each(?1))";

/// Their tasks, grouped by job and in planning order within each (`tasks_by_position`).
const LOAD_TASKS: &str = "SELECT job_id, body FROM tasks
    WHERE job_id IN (SELECT value FROM json_each(?1)) ORDER BY job_id, position";

/// Rewrites `rows` job rows, each bound as a [`JobRow`].
fn update_jobs_sql(rows: usize) -> String {
    format!(
        "UPDATE jobs SET tenant = n.column2, job_type = n.column3, status = n.column4,
             updated_at_ms = n.column5, body = n.column6
         FROM (VALUES {}) AS n WHERE jobs.job_id = n.column1",
        values(rows, 6)
    )
}

/// Writes `rows` task rows, new or not, each bound as a [`TaskRow`].
fn upsert_tasks_sql(rows: usize) -> String {
    format!(
        "INSERT INTO tasks (job_id, task_id, position, status, worker_id, lease_id,
                            lease_expires_ms, body)
         VALUES {}
         ON CONFLICT (job_id, task_id) DO UPDATE SET
             position = excluded.position, status = excluded.status,
             worker_id = excluded.worker_id, lease_id = excluded.lease_id,
             lease_expires_ms = excluded.lease_expires_ms, body = excluded.body",
        values(rows, 8)
    )
}

/// Deletes task rows named by a JSON array of `[job id, task id]`.
const DELETE_TASKS: &str = "DELETE FROM tasks
    WHERE (job_id, task_id) IN (SELECT value->>0, value->>1 FROM json_each(?1))";

/// Per renewal (`?1` a JSON array of `[job id, task id]`), its index and the task's lease
/// columns; renewals of missing tasks have no row.
const LOAD_LEASES: &str = "SELECT r.key AS k, tasks.status, tasks.lease_id, tasks.body
    FROM json_each(?1) AS r
    JOIN tasks ON tasks.job_id = r.value->>0 AND tasks.task_id = r.value->>1";

/// Sets the lease deadline and re-encoded body of `rows` tasks, each bound as
/// `(job id, task id, deadline ms, body)`.
fn extend_leases_sql(rows: usize) -> String {
    format!(
        "UPDATE tasks SET lease_expires_ms = n.column3, body = n.column4
         FROM (VALUES {}) AS n
         WHERE tasks.job_id = n.column1 AND tasks.task_id = n.column2",
        values(rows, 4)
    )
}

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

    /// Writes the rows, a few statements per kind of change that has any.
    #[tracing::instrument(skip_all)]
    pub(super) async fn write(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        batch::execute(conn, &self.jobs, update_jobs_sql, |q, r| {
            q.bind(r.0)
                .bind(r.1)
                .bind(r.2)
                .bind(r.3)
                .bind(r.4)
                .bind(r.5.as_str())
        })
        .await?;
        batch::execute(conn, &self.tasks, upsert_tasks_sql, |q, r| {
            q.bind(r.0)
                .bind(r.1)
                .bind(r.2)
                .bind(r.3)
                .bind(r.4)
                .bind(r.5)
                .bind(r.6)
                .bind(r.7.as_str())
        })
        .await?;
        if !self.gone.is_empty() {
            let q = sqlx::query(DELETE_TASKS).bind(to_json(&self.gone)?);
            q.execute(&mut *conn).await?;
        }
        Ok(())
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
    let until = to_millis(until);
    batch::execute(conn, &extend, extend_leases_sql, |q, r| {
        q.bind(r.0).bind(r.1).bind(until).bind(r.2.as_str())
    })
    .await?;
    Ok(out)
}

/// `rows` outbox entries, each bound by [`bind_entry`], in order.
fn insert_outbox_sql(rows: usize) -> String {
    format!(
        "INSERT INTO outbox ({}) VALUES {}",
        entry_columns!(),
        values(rows, ENTRY_COLUMNS)
    )
}

/// Sends entries where the store's dispatch mode says, inside the caller's transaction;
/// entries keep their order (queue `seq`, outbox `id`).
pub(super) async fn dispatch(
    conn: &mut SqliteConnection,
    mode: Dispatch,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    match mode {
        Dispatch::Direct => crate::queue::sqlite::upsert_entries(conn, entries).await,
        Dispatch::Outbox => batch::execute(conn, entries, insert_outbox_sql, bind_entry).await,
    }
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
            LOAD_JOBS.to_owned(),
            LOAD_TASKS.to_owned(),
            update_jobs_sql(2),
            upsert_tasks_sql(2),
            DELETE_TASKS.to_owned(),
            LOAD_LEASES.to_owned(),
            extend_leases_sql(2),
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
