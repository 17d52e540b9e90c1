//! Single-job SQL for the job aggregate: writing new jobs, reading one, and listing jobs and
//! tasks. Updates of many jobs are in `update`.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::rows::{json, to_json};
use super::update::INSERT_TASK;
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, Status, Task};
use crate::store::{JobFilter, JobPage, StoreError, TaskFilter, TaskPage};

/// A new job's rows with their JSON bodies, and its record's copy for the writer's cache,
/// made before the writer connection is taken so that they do not hold up other writers.
pub(super) struct NewRows<'a> {
    record: &'a JobRecord,
    job_body: String,
    task_bodies: Vec<String>,
    pub(super) kept: Arc<JobRecord>,
}

impl<'a> NewRows<'a> {
    pub(super) fn encode(record: &'a JobRecord) -> rusqlite::Result<NewRows<'a>> {
        Ok(NewRows {
            record,
            job_body: to_json(&record.job)?,
            task_bodies: record.tasks.iter().map(to_json).collect::<Result<_, _>>()?,
            kept: Arc::new(record.clone()),
        })
    }
}

/// Inserts new jobs with all their tasks: job rows in order (so `seq` follows the batch),
/// then task rows.
#[tracing::instrument(skip_all, fields(jobs = rows.len()))]
pub(super) fn insert_jobs(conn: &Connection, rows: &[&NewRows<'_>]) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (job_id, tenant, job_type, status, created_at_ms, updated_at_ms, body,
             finished_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for r in rows {
        let job = &r.record.job;
        insert.execute((
            job.job_id.as_str(),
            job.tenant.as_str(),
            job.job_type.as_str(),
            job.status.as_str(),
            to_millis(job.created_at),
            to_millis(job.updated_at),
            &r.job_body,
            job.finished_at.map(to_millis),
        ))?;
    }
    let mut insert = conn.prepare_cached(INSERT_TASK)?;
    for r in rows {
        let job_id = r.record.job.job_id.as_str();
        for (position, (task, body)) in r.record.tasks.iter().zip(&r.task_bodies).enumerate() {
            insert.execute((
                job_id,
                task.task_id.as_str(),
                i64::try_from(position).unwrap_or(i64::MAX),
                task.status.as_str(),
                task.worker_id.as_ref().map(|w| w.as_str()),
                task.lease_id.as_ref().map(|l| l.as_str()),
                task.lease_expires.map(to_millis),
                body,
            ))?;
        }
    }
    Ok(())
}

/// Unfinished jobs with a task waiting since before `?1` (queued in a job not changed since,
/// or running on a lease that ran out before it), least recently changed first, at most
/// `?2`. Walks the unfinished jobs of `jobs_by_status`; the sweep runs it rarely.
pub(super) const STALE_JOBS: &str = "SELECT job_id FROM jobs
    WHERE status IN ('Queued', 'Running')
      AND EXISTS (SELECT 1 FROM tasks WHERE tasks.job_id = jobs.job_id
          AND ((tasks.status = 'Queued' AND jobs.updated_at_ms < ?1)
            OR (tasks.status = 'Running' AND tasks.lease_expires_ms < ?1)))
    ORDER BY updated_at_ms LIMIT (SELECT ?2)";

/// The job and its tasks in planning order, as seen by `conn`'s current transaction.
pub(super) fn load_record(conn: &Connection, id: &JobId) -> rusqlite::Result<Option<JobRecord>> {
    let Some(job) = load_job(conn, id)? else {
        return Ok(None);
    };
    let tasks = load_tasks(conn, id)?;
    Ok(Some(JobRecord { job, tasks }))
}

/// The job row alone.
pub(super) fn load_job(conn: &Connection, id: &JobId) -> rusqlite::Result<Option<Job>> {
    conn.prepare_cached("SELECT body FROM jobs WHERE job_id = ?1")?
        .query_row([id.as_str()], |r| json(r, "body"))
        .optional()
}

/// A job's tasks in planning order (`tasks_by_position`).
pub(super) fn load_tasks(conn: &Connection, id: &JobId) -> rusqlite::Result<Vec<Task>> {
    conn.prepare_cached("SELECT body FROM tasks WHERE job_id = ?1 ORDER BY position")?
        .query_map([id.as_str()], |r| json(r, "body"))?
        .collect()
}

/// A page of jobs, newest first. `seq` is the cursor: pages are stable under inserts.
#[tracing::instrument(skip_all)]
pub(super) fn list_jobs(conn: &Connection, filter: &JobFilter) -> Result<JobPage, StoreError> {
    let before = match &filter.cursor {
        Some(c) => c
            .parse::<u64>()
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
            .map_err(|_| StoreError::NotFound(format!("cursor `{c}`")))?,
        None => i64::MAX,
    };
    // Only the filters that are set appear in the statement, so SQLite can walk the index of
    // the filtered column (`(col, seq)`) instead of scanning every job by seq. Every fragment
    // is a literal and every value is bound.
    let mut sql = String::from("SELECT seq, body FROM jobs WHERE seq < ?");
    let mut args: Vec<rusqlite::types::Value> = vec![before.into()];
    if let Some(st) = filter.status {
        sql.push_str(" AND status = ?");
        args.push(st.as_str().to_owned().into());
    }
    if let Some(t) = &filter.tenant {
        sql.push_str(" AND tenant = ?");
        args.push(t.as_str().to_owned().into());
    }
    if let Some(t) = &filter.job_type {
        sql.push_str(" AND job_type = ?");
        args.push(t.clone().into());
    }
    sql.push_str(" ORDER BY seq DESC LIMIT (SELECT ?)");
    args.push(i64::from(filter.limit).into());
    let page = || -> rusqlite::Result<(Vec<Job>, Option<i64>)> {
        let mut st = conn.prepare_cached(&sql)?;
        let mut rows = st.query(params_from_iter(args))?;
        let (mut jobs, mut last) = (Vec::new(), None);
        while let Some(r) = rows.next()? {
            jobs.push(json(r, "body")?);
            last = Some(r.get("seq")?);
        }
        Ok((jobs, last))
    };
    let (jobs, last) = page().map_err(super::store_err)?;
    // Only hand out a cursor when a further page may exist.
    let next_cursor = last
        .filter(|_| jobs.len() == filter.limit as usize)
        .map(|seq: i64| seq.to_string());
    Ok(JobPage { jobs, next_cursor })
}

/// A page of one job's tasks in planning order, with the count of all matches.
#[tracing::instrument(skip_all)]
pub(super) fn list_tasks(
    conn: &Connection,
    job_id: &JobId,
    filter: &TaskFilter,
) -> rusqlite::Result<Option<TaskPage>> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE job_id = ?1")?
        .query_row([job_id.as_str()], |_| Ok(()))
        .optional()?;
    if exists.is_none() {
        return Ok(None);
    }
    let status = filter.status.map(Status::as_str);
    let worker = filter.worker_id.as_ref().map(|w| w.as_str());
    let total: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM tasks WHERE job_id = ?1
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR worker_id = ?3)",
        )?
        .query_row((job_id.as_str(), status, worker), |r| r.get(0))?;
    let tasks = conn
        .prepare_cached(
            "SELECT body FROM tasks WHERE job_id = ?1
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR worker_id = ?3)
             ORDER BY position LIMIT (SELECT ?4) OFFSET (SELECT ?5)",
        )?
        // A negative LIMIT means "no limit" to SQLite.
        .query_map(
            (
                job_id.as_str(),
                status,
                worker,
                filter.limit.map_or(-1, i64::from),
                filter.offset,
            ),
            |r| json(r, "body"),
        )?
        .collect::<rusqlite::Result<Vec<Task>>>()?;
    Ok(Some(TaskPage {
        total: u64::try_from(total).unwrap_or(0),
        tasks,
    }))
}
