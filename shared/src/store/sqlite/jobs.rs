//! Single-job SQL for the job aggregate: writing a new job, reading one, and listing jobs and
//! tasks. Batched updates of many jobs are in `update`.

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use super::batch;
use super::rows::{json, to_json};
use super::update::Changes;
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, Status, Task};
use crate::store::{JobFilter, JobPage, StoreError, TaskFilter, TaskPage};

/// Inserts many new jobs with all their tasks: job rows in order (so `seq` follows the
/// batch), then task rows, a few multi-row statements each.
#[tracing::instrument(skip_all, fields(jobs = records.len()))]
pub(super) async fn insert_jobs(
    conn: &mut SqliteConnection,
    records: &[&JobRecord],
) -> Result<(), sqlx::Error> {
    let rows = records
        .iter()
        .map(|r| {
            let job = &r.job;
            Ok((job, to_json(job)?))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    batch::execute(conn, &rows, insert_jobs_sql, |q, (job, body)| {
        q.bind(job.job_id.as_str())
            .bind(job.tenant.as_str())
            .bind(job.job_type.as_str())
            .bind(job.status.as_str())
            .bind(to_millis(job.created_at))
            .bind(to_millis(job.updated_at))
            .bind(body.as_str())
    })
    .await?;
    let mut changes = Changes::default();
    for r in records {
        changes.add_new_tasks(r)?;
    }
    changes.write(conn).await
}

/// `rows` new job rows, in order.
fn insert_jobs_sql(rows: usize) -> String {
    format!(
        "INSERT INTO jobs (job_id, tenant, job_type, status, created_at_ms, updated_at_ms, body)
         VALUES {}",
        batch::values(rows, 7)
    )
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
