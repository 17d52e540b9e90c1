//! SQL for the job aggregate: the `jobs` row, its `tasks` rows, and the entries it dispatches.

use std::collections::HashMap;

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use super::rows::{bind_entry, entry_columns, json, to_json};
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, QueueEntry, Status, Task, TaskId, Timestamp};
use crate::store::{Dispatch, JobFilter, JobPage, LeaseRenewal, StoreError, TaskFilter, TaskPage};

/// Inserts a new job row and all its task rows.
#[tracing::instrument(skip_all)]
pub(super) async fn insert_job(
    conn: &mut SqliteConnection,
    record: &JobRecord,
) -> Result<(), sqlx::Error> {
    let job = &record.job;
    sqlx::query(
        "INSERT INTO jobs (job_id, tenant, job_type, status, created_at_ms, updated_at_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(job.job_id.as_str())
    .bind(job.tenant.as_str())
    .bind(&job.job_type)
    .bind(job.status.as_str())
    .bind(to_millis(job.created_at))
    .bind(to_millis(job.updated_at))
    .bind(to_json(job)?)
    .execute(&mut *conn)
    .await?;
    for (position, task) in record.tasks.iter().enumerate() {
        upsert_task(conn, &job.job_id, position, task).await?;
    }
    Ok(())
}

/// The job and its tasks in planning order, as seen by `conn`'s current transaction.
#[tracing::instrument(skip_all)]
pub(super) async fn load_record(
    conn: &mut SqliteConnection,
    id: &JobId,
) -> Result<Option<JobRecord>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT body FROM jobs WHERE job_id = ?1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let job: Job = json(&row, "body")?;
    let tasks = sqlx::query("SELECT body FROM tasks WHERE job_id = ?1 ORDER BY position")
        .bind(id.as_str())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| json::<Task>(r, "body"))
        .collect::<Result<_, _>>()?;
    Ok(Some(JobRecord { job, tasks }))
}

/// The job row alone.
pub(super) async fn load_job(
    conn: &mut SqliteConnection,
    id: &JobId,
) -> Result<Option<Job>, sqlx::Error> {
    sqlx::query("SELECT body FROM jobs WHERE job_id = ?1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| json(&row, "body"))
        .transpose()
}

/// Writes what differs between `before` and `after`: the job row if the job changed, and only
/// the task rows that changed, moved, appeared or disappeared.
#[tracing::instrument(skip_all)]
pub(super) async fn write_changes(
    conn: &mut SqliteConnection,
    before: &JobRecord,
    after: &JobRecord,
) -> Result<(), sqlx::Error> {
    let job_id = &before.job.job_id;
    if before.job != after.job {
        let job = &after.job;
        sqlx::query(
            "UPDATE jobs SET tenant = ?2, job_type = ?3, status = ?4, updated_at_ms = ?5, body = ?6
             WHERE job_id = ?1",
        )
        .bind(job_id.as_str())
        .bind(job.tenant.as_str())
        .bind(&job.job_type)
        .bind(job.status.as_str())
        .bind(to_millis(job.updated_at))
        .bind(to_json(job)?)
        .execute(&mut *conn)
        .await?;
    }
    let old: HashMap<&TaskId, (usize, &Task)> = before
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (&t.task_id, (i, t)))
        .collect();
    for (position, task) in after.tasks.iter().enumerate() {
        if old.get(&task.task_id) != Some(&(position, task)) {
            upsert_task(conn, job_id, position, task).await?;
        }
    }
    for gone in before
        .tasks
        .iter()
        .filter(|t| after.task(&t.task_id).is_none())
    {
        sqlx::query("DELETE FROM tasks WHERE job_id = ?1 AND task_id = ?2")
            .bind(job_id.as_str())
            .bind(gone.task_id.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Writes one task row, its indexed columns together with its body.
pub(super) async fn upsert_task(
    conn: &mut SqliteConnection,
    job_id: &JobId,
    position: usize,
    task: &Task,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tasks (job_id, task_id, position, status, worker_id, lease_id,
                            lease_expires_ms, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (job_id, task_id) DO UPDATE SET
             position = excluded.position, status = excluded.status,
             worker_id = excluded.worker_id, lease_id = excluded.lease_id,
             lease_expires_ms = excluded.lease_expires_ms, body = excluded.body",
    )
    .bind(job_id.as_str())
    .bind(task.task_id.as_str())
    .bind(i64::try_from(position).unwrap_or(i64::MAX))
    .bind(task.status.as_str())
    .bind(task.worker_id.as_ref().map(|w| w.as_str()))
    .bind(task.lease_id.as_ref().map(|l| l.as_str()))
    .bind(task.lease_expires.map(to_millis))
    .bind(to_json(task)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The task's status if `r` names its current lease (and then, while it runs, its lease
/// is extended to `until`), else `None`.
pub(super) async fn renew_lease(
    conn: &mut SqliteConnection,
    r: &LeaseRenewal,
    until: Timestamp,
) -> Result<Option<Status>, sqlx::Error> {
    let row =
        sqlx::query("SELECT status, lease_id, body FROM tasks WHERE job_id = ?1 AND task_id = ?2")
            .bind(r.task.job_id.as_str())
            .bind(r.task.task_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<Option<&str>, _>("lease_id")? != Some(r.lease_id.as_str()) {
        return Ok(None);
    }
    let status: Status = row
        .try_get::<&str, _>("status")?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))?;
    if status == Status::Running {
        let mut task: Task = json(&row, "body")?;
        task.lease_expires = Some(until);
        sqlx::query(
            "UPDATE tasks SET lease_expires_ms = ?3, body = ?4 WHERE job_id = ?1 AND task_id = ?2",
        )
        .bind(r.task.job_id.as_str())
        .bind(r.task.task_id.as_str())
        .bind(to_millis(until))
        .bind(to_json(&task)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(status))
}

/// Sends entries where the store's dispatch mode says, inside the caller's transaction.
pub(super) async fn dispatch(
    conn: &mut SqliteConnection,
    mode: Dispatch,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    match mode {
        Dispatch::Direct => crate::queue::sqlite::upsert_entries(conn, entries).await,
        Dispatch::Outbox => {
            for e in entries {
                let q = sqlx::query(concat!(
                    "INSERT INTO outbox (",
                    entry_columns!(),
                    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ));
                bind_entry(q, e).execute(&mut *conn).await?;
            }
            Ok(())
        }
    }
}

/// A page of jobs, newest first. `seq` is the cursor: pages are stable under inserts.
#[tracing::instrument(skip_all)]
pub(super) async fn list_jobs(
    conn: &mut SqliteConnection,
    filter: &JobFilter,
) -> Result<JobPage, StoreError> {
    let before = match &filter.cursor {
        Some(c) => c
            .parse::<u64>()
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
            .map_err(|_| StoreError::NotFound(format!("cursor `{c}`")))?,
        None => i64::MAX,
    };
    // Only the filters that are set appear in the statement, so SQLite can walk the index of
    // the filtered column (`(col, seq)`) instead of scanning every job by seq. Every fragment
    // is a literal and every value is bound, which is what makes `AssertSqlSafe` true.
    let mut sql = String::from("SELECT seq, body FROM jobs WHERE seq < ?");
    if filter.status.is_some() {
        sql.push_str(" AND status = ?");
    }
    if filter.tenant.is_some() {
        sql.push_str(" AND tenant = ?");
    }
    if filter.job_type.is_some() {
        sql.push_str(" AND job_type = ?");
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(before);
    if let Some(st) = filter.status {
        q = q.bind(st.as_str());
    }
    if let Some(t) = &filter.tenant {
        q = q.bind(t.as_str());
    }
    if let Some(t) = &filter.job_type {
        q = q.bind(t.as_str());
    }
    let rows = q
        .bind(filter.limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(super::store_err)?;
    let jobs = rows
        .iter()
        .map(|r| json(r, "body"))
        .collect::<Result<Vec<Job>, _>>();
    let jobs = jobs.map_err(super::store_err)?;
    // Only hand out a cursor when a further page may exist.
    let next_cursor = match rows.last() {
        Some(last) if jobs.len() == filter.limit as usize => Some(
            last.try_get::<i64, _>("seq")
                .map_err(super::store_err)?
                .to_string(),
        ),
        _ => None,
    };
    Ok(JobPage { jobs, next_cursor })
}

/// A page of one job's tasks in planning order, with the count of all matches.
#[tracing::instrument(skip_all)]
pub(super) async fn list_tasks(
    conn: &mut SqliteConnection,
    job_id: &JobId,
    filter: &TaskFilter,
) -> Result<Option<TaskPage>, sqlx::Error> {
    let exists = sqlx::query("SELECT 1 FROM jobs WHERE job_id = ?1")
        .bind(job_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let status = filter.status.map(Status::as_str);
    let worker = filter.worker_id.as_ref().map(|w| w.as_str());
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tasks
         WHERE job_id = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR worker_id = ?3)",
    )
    .bind(job_id.as_str())
    .bind(status)
    .bind(worker)
    .fetch_one(&mut *conn)
    .await?;
    let rows: Vec<SqliteRow> = sqlx::query(
        "SELECT body FROM tasks
         WHERE job_id = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR worker_id = ?3)
         ORDER BY position LIMIT ?4 OFFSET ?5",
    )
    .bind(job_id.as_str())
    .bind(status)
    .bind(worker)
    // A negative LIMIT means "no limit" to SQLite.
    .bind(filter.limit.map_or(-1, i64::from))
    .bind(filter.offset)
    .fetch_all(&mut *conn)
    .await?;
    let tasks = rows
        .iter()
        .map(|r| json(r, "body"))
        .collect::<Result<_, _>>()?;
    Ok(Some(TaskPage {
        total: u64::try_from(total).unwrap_or(0),
        tasks,
    }))
}
