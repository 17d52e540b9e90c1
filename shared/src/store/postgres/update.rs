//! Updates of job aggregates: `update_jobs` and `renew_leases`, inside the caller's
//! transaction. The job rows of a batch are locked first, in job-id order; then the records
//! are loaded, the rule applied, and the diff written with one array statement per kind of
//! change.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::{PgConnection, Row};

use super::db::PgError;
use super::jobs::{INSERT_TASKS, LOCK_JOB_ROWS, TaskArrays, load_records};
use super::rows::{EntryArrays, entry_columns, json, to_json, unnest_entries};
use crate::clock::to_millis;
use crate::domain::{
    BeforeChange, Job, JobId, JobRecord, QueueEntry, Status, Task, TaskId, Timestamp,
    owed_deliveries,
};
use crate::store::diff::{TaskChange, task_changes};
use crate::store::{ApplyFn, Dispatch, LeaseRenewal};

/// Rewrites job rows from arrays: job id, status, updated at (ms), body, finished at (ms). A
/// job's tenant and type never change, so their indexes are left alone.
const UPDATE_JOBS: &str = "UPDATE jobs SET status = r.s, updated_at_ms = r.u, body = r.b::json,
        finished_at_ms = r.f
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[])
        AS r(j, s, u, b, f)
    WHERE jobs.job_id = r.j";

/// Rewrites task rows in place, with [`INSERT_TASKS`]'s parameters. No indexed column changes,
/// so Postgres can keep these updates HOT.
const UPDATE_TASKS: &str = "UPDATE tasks SET position = r.p, status = r.s, worker_id = r.w,
        lease_id = r.l, lease_expires_ms = r.e, body = r.b::json
    FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
                $7::int8[], $8::text[]) AS r(j, t, p, s, w, l, e, b)
    WHERE tasks.job_id = r.j AND tasks.task_id = r.t";

/// Deletes task rows: job ids, task ids.
const DELETE_TASKS: &str = "DELETE FROM tasks USING UNNEST($1::text[], $2::text[]) AS r(j, t)
    WHERE tasks.job_id = r.j AND tasks.task_id = r.t";

/// The lease columns of tasks named by (job, task) arrays, with each pair's index `o`.
const LOAD_LEASES: &str = "SELECT r.o, t.status, t.lease_id, t.body::text AS body
    FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS r(j, k, o)
    JOIN tasks t ON t.job_id = r.j AND t.task_id = r.k";

/// Sets tasks' lease deadline and re-encoded body: job ids, task ids, deadline, bodies.
const EXTEND_LEASES: &str = "UPDATE tasks SET lease_expires_ms = r.e, body = r.b::json
    FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[]) AS r(j, t, e, b)
    WHERE tasks.job_id = r.j AND tasks.task_id = r.t";

/// Appends entries to the outbox, in order.
const INSERT_OUTBOX: &str = concat!(
    "INSERT INTO outbox (",
    entry_columns!(),
    ") SELECT ",
    entry_columns!(),
    " FROM ",
    unnest_entries!(),
    " ORDER BY o"
);

/// The rows a batch writes: only what differs between the records as loaded and as left.
#[derive(Default)]
struct Changes<'a> {
    jobs: Vec<&'a Job>,
    inserted: Vec<(&'a JobId, usize, &'a Task)>,
    updated: Vec<(&'a JobId, usize, &'a Task)>,
    gone: Vec<(&'a JobId, &'a TaskId)>,
}

impl<'a> Changes<'a> {
    /// The job row if the job changed, and only the task rows that changed, moved, appeared or
    /// disappeared.
    fn diff(&mut self, before: &'a JobRecord, after: &'a JobRecord) {
        let job_id = &before.job.job_id;
        if before.job != after.job {
            self.jobs.push(&after.job);
        }
        let (changed, gone) = task_changes(before, after);
        for (position, task, change) in changed {
            match change {
                TaskChange::Added => self.inserted.push((job_id, position, task)),
                TaskChange::Changed | TaskChange::Moved => {
                    self.updated.push((job_id, position, task));
                }
            }
        }
        self.gone.extend(gone.into_iter().map(|t| (job_id, t)));
    }

    /// Writes the rows: at most one statement per kind of change.
    async fn write(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        if !self.jobs.is_empty() {
            let mut bodies = Vec::with_capacity(self.jobs.len());
            for job in &self.jobs {
                bodies.push(to_json(job)?);
            }
            sqlx::query(UPDATE_JOBS)
                .bind(
                    self.jobs
                        .iter()
                        .map(|j| j.job_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    self.jobs
                        .iter()
                        .map(|j| j.status.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    self.jobs
                        .iter()
                        .map(|j| to_millis(j.updated_at))
                        .collect::<Vec<_>>(),
                )
                .bind(bodies)
                .bind(
                    self.jobs
                        .iter()
                        .map(|j| j.finished_at.map(to_millis))
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *conn)
                .await?;
        }
        if !self.gone.is_empty() {
            sqlx::query(DELETE_TASKS)
                .bind(
                    self.gone
                        .iter()
                        .map(|(j, _)| j.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    self.gone
                        .iter()
                        .map(|(_, t)| t.as_str())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *conn)
                .await?;
        }
        for (rows, sql) in [
            (&self.updated, UPDATE_TASKS),
            (&self.inserted, INSERT_TASKS),
        ] {
            let mut arrays = TaskArrays::default();
            for &(job_id, position, task) in rows {
                arrays.push(job_id, position, task, to_json(task)?);
            }
            arrays.execute(conn, sql).await?;
        }
        Ok(())
    }
}

/// Applies `apply` to each existing job among `ids`, in order, and writes back what changed
/// plus the entries and acks it returned, inside the caller's transaction. The job rows stay
/// locked until it ends, so concurrent writers of the same job (other gateway processes) take
/// turns.
/// A job listed twice is applied twice, the second time to the result of the first.
pub(super) async fn update_jobs(
    conn: &mut PgConnection,
    mode: Dispatch,
    ids: &[JobId],
    apply: &mut ApplyFn<'_>,
) -> Result<(), PgError> {
    if ids.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = ids.iter().map(JobId::as_str).collect();
    let loaded = load_records(&mut *conn, &keys, true).await?;
    let mut after: HashMap<&str, JobRecord> = HashMap::with_capacity(loaded.len());
    // First-seen order, so that rows are written in the order the batch named them.
    let mut order = Vec::with_capacity(loaded.len());
    let mut ready = Vec::new();
    let mut acks = Vec::new();
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
        let writes = apply(record);
        ready.extend(writes.enqueue);
        acks.extend(writes.ack);
    }
    let mut changes = Changes::default();
    let mut hooks = Vec::new();
    for id in order {
        changes.diff(&loaded[id], &after[id]);
        hooks.extend(owed_deliveries(&BeforeChange::of(&loaded[id]), &after[id]));
    }
    changes.write(&mut *conn).await?;
    // Webhook deliveries commit with the change that owes them, or neither does.
    super::webhooks::insert(&mut *conn, &hooks).await?;
    dispatch(&mut *conn, mode, &ready).await?;
    // After the entries, as the engine would ack after the commit: a task both acked and
    // made ready again keeps its fresh entry.
    if !acks.is_empty() {
        debug_assert_eq!(
            mode,
            Dispatch::Direct,
            "acks come only with Direct dispatch"
        );
        crate::queue::postgres::ack_entries(conn, &acks).await?;
    }
    Ok(())
}

/// Per renewal, the task's status if the renewal names its current lease (and then, while it
/// runs, its lease is extended to `until`), else `None`. The renewed tasks' job rows are locked
/// first, as `update_jobs` locks them, so a renewal never writes back a task body that a
/// concurrent update has just replaced.
pub(super) async fn renew_leases(
    conn: &mut PgConnection,
    renewals: &[LeaseRenewal],
    until: Timestamp,
) -> Result<Vec<Option<Status>>, PgError> {
    let mut jobs: Vec<&str> = renewals.iter().map(|r| r.task.job_id.as_str()).collect();
    jobs.sort_unstable();
    jobs.dedup();
    sqlx::query(LOCK_JOB_ROWS)
        .bind(&jobs)
        .execute(&mut *conn)
        .await?;
    let rows = sqlx::query(LOAD_LEASES)
        .bind(
            renewals
                .iter()
                .map(|r| r.task.job_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            renewals
                .iter()
                .map(|r| r.task.task_id.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    let mut out = vec![None; renewals.len()];
    let mut extended: HashMap<(&str, &str), String> = HashMap::new();
    for row in &rows {
        let i = usize::try_from(row.try_get::<i64, _>("o")? - 1)
            .map_err(|e| super::rows::decode_err("o", e))?;
        let Some(r) = renewals.get(i) else { continue };
        let lease: Option<&str> = row.try_get("lease_id")?;
        if lease != Some(r.lease_id.as_str()) {
            continue;
        }
        let status: Status = row
            .try_get::<&str, _>("status")?
            .parse()
            .map_err(|e: String| super::rows::decode_err("status", e))?;
        if status == Status::Running {
            let mut task: Task = json(row, "body")?;
            task.lease_expires = Some(until);
            extended.insert(
                (r.task.job_id.as_str(), r.task.task_id.as_str()),
                to_json(&task)?,
            );
        }
        out[i] = Some(status);
    }
    if !extended.is_empty() {
        let (keys, bodies): (Vec<_>, Vec<_>) = extended.into_iter().unzip();
        sqlx::query(EXTEND_LEASES)
            .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
            .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
            .bind(vec![to_millis(until); keys.len()])
            .bind(bodies)
            .execute(&mut *conn)
            .await?;
    }
    Ok(out)
}

/// Sends entries where the store's dispatch mode says, inside the caller's transaction;
/// entries keep their order (queue `seq`, outbox `id`).
pub(super) async fn dispatch(
    conn: &mut PgConnection,
    mode: Dispatch,
    entries: &[QueueEntry],
) -> Result<(), PgError> {
    if entries.is_empty() {
        return Ok(());
    }
    match mode {
        Dispatch::Direct => crate::queue::postgres::upsert_entries(conn, entries).await,
        Dispatch::Outbox => {
            EntryArrays::of(entries)
                .bind(sqlx::query(INSERT_OUTBOX))
                .execute(conn)
                .await?;
            Ok(())
        }
    }
}
