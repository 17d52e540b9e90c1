//! SQL for the job aggregate: writing new jobs, loading records, and listing jobs and tasks.
//! Every statement that touches many rows takes its values as arrays (`= ANY($1)`, `UNNEST`),
//! so a batch costs one round trip per statement, not one per row.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgConnection, Row};

use super::db::PgError;
use super::rows::{json, to_json};
use crate::clock::to_millis;
use crate::domain::{Job, JobId, JobRecord, Task};
use crate::store::{JobFilter, JobPage, StoreError, TaskFilter, TaskPage};

/// Inserts job rows from arrays, in array order (so `seq` follows the batch).
const INSERT_JOBS: &str = "INSERT INTO jobs (job_id, tenant, job_type, status, created_at_ms,
        updated_at_ms, body, finished_at_ms)
    SELECT j, t, ty, s, c, u, b::json, f
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                $7::text[], $8::int8[]) WITH ORDINALITY AS r(j, t, ty, s, c, u, b, f, o)
    ORDER BY o";

/// Inserts task rows from arrays: job, task, position, status, worker, lease, lease expiry,
/// body.
pub(super) const INSERT_TASKS: &str = "INSERT INTO tasks (job_id, task_id, position, status,
        worker_id, lease_id, lease_expires_ms, body)
    SELECT j, t, p, s, w, l, e, b::json
    FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
                $7::int8[], $8::text[]) AS r(j, t, p, s, w, l, e, b)";

/// The job rows of `$1`, locked for the rest of the transaction, in job-id order: every
/// writer locks jobs in this one order, so two writers of overlapping batches cannot deadlock.
const LOCK_JOBS: &str = "SELECT job_id, body::text AS body FROM jobs
    WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE";

/// Locks the job rows of `$1` for the rest of the transaction, in [`LOCK_JOBS`]'s order,
/// reading nothing.
pub(super) const LOCK_JOB_ROWS: &str =
    "SELECT 1 FROM jobs WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE";

/// The job rows of `$1` (position -1) and their tasks, each job's in planning order, in one
/// statement and so from one snapshot.
const LOAD_RECORDS: &str = "SELECT job_id, -1 AS position, body::text AS body FROM jobs
        WHERE job_id = ANY($1)
    UNION ALL
    SELECT job_id, position, body::text FROM tasks WHERE job_id = ANY($1)
    ORDER BY job_id, position";

/// The tasks of the jobs `$1`, each job's in planning order (primary key, then a small sort).
pub(super) const LOAD_TASKS: &str = "SELECT job_id, body::text AS body FROM tasks
    WHERE job_id = ANY($1) ORDER BY job_id, position";

/// A new job's rows with their JSON bodies, encoded before a connection is taken.
pub(super) struct NewRows<'a> {
    pub(super) record: &'a JobRecord,
    job_body: String,
    task_bodies: Vec<String>,
}

impl<'a> NewRows<'a> {
    pub(super) fn encode(record: &'a JobRecord) -> Result<NewRows<'a>, StoreError> {
        Ok(NewRows {
            record,
            job_body: to_json(&record.job)?,
            task_bodies: record.tasks.iter().map(to_json).collect::<Result<_, _>>()?,
        })
    }
}

/// Task rows as column arrays, bound as [`INSERT_TASKS`]'s parameters.
#[derive(Default)]
pub(super) struct TaskArrays<'a> {
    job_id: Vec<&'a str>,
    task_id: Vec<&'a str>,
    position: Vec<i32>,
    status: Vec<&'a str>,
    worker_id: Vec<Option<&'a str>>,
    lease_id: Vec<Option<&'a str>>,
    lease_expires_ms: Vec<Option<i64>>,
    body: Vec<String>,
}

impl<'a> TaskArrays<'a> {
    /// Adds a task row.
    pub(super) fn push(
        &mut self,
        job_id: &'a JobId,
        position: usize,
        task: &'a Task,
        body: String,
    ) {
        self.job_id.push(job_id.as_str());
        self.task_id.push(task.task_id.as_str());
        self.position
            .push(i32::try_from(position).unwrap_or(i32::MAX));
        self.status.push(task.status.as_str());
        self.worker_id
            .push(task.worker_id.as_ref().map(|w| w.as_str()));
        self.lease_id
            .push(task.lease_id.as_ref().map(|l| l.as_str()));
        self.lease_expires_ms
            .push(task.lease_expires.map(to_millis));
        self.body.push(body);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.job_id.is_empty()
    }

    /// Runs `sql` (with [`INSERT_TASKS`]'s parameters) over the rows.
    pub(super) async fn execute(
        self,
        conn: &mut PgConnection,
        sql: &'static str,
    ) -> Result<(), PgError> {
        if self.is_empty() {
            return Ok(());
        }
        sqlx::query(sql)
            .bind(self.job_id)
            .bind(self.task_id)
            .bind(self.position)
            .bind(self.status)
            .bind(self.worker_id)
            .bind(self.lease_id)
            .bind(self.lease_expires_ms)
            .bind(self.body)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Inserts new jobs with all their tasks: one statement for the job rows, one for the tasks.
pub(super) async fn insert_jobs(
    conn: &mut PgConnection,
    rows: &[&NewRows<'_>],
) -> Result<(), PgError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let (mut tenants, mut types, mut statuses) = (Vec::new(), Vec::new(), Vec::new());
    let (mut created, mut updated, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    let mut finished = Vec::with_capacity(rows.len());
    let mut tasks = TaskArrays::default();
    for r in rows {
        let job = &r.record.job;
        ids.push(job.job_id.as_str());
        tenants.push(job.tenant.as_str());
        types.push(job.job_type.as_str());
        statuses.push(job.status.as_str());
        created.push(to_millis(job.created_at));
        updated.push(to_millis(job.updated_at));
        bodies.push(r.job_body.as_str());
        finished.push(job.finished_at.map(to_millis));
        for (position, (task, body)) in r.record.tasks.iter().zip(&r.task_bodies).enumerate() {
            tasks.push(&job.job_id, position, task, body.clone());
        }
    }
    sqlx::query(INSERT_JOBS)
        .bind(ids)
        .bind(tenants)
        .bind(types)
        .bind(statuses)
        .bind(created)
        .bind(updated)
        .bind(bodies)
        .bind(finished)
        .execute(&mut *conn)
        .await?;
    tasks.execute(conn, INSERT_TASKS).await
}

/// The records of the jobs among `ids` that exist, by job id. With `lock`, the job rows stay
/// locked until the transaction ends, and the tasks are read after the locks are held, so they
/// are the latest committed ones; without, job and tasks come from one statement's snapshot.
pub(super) async fn load_records(
    conn: &mut PgConnection,
    ids: &[&str],
    lock: bool,
) -> Result<HashMap<String, JobRecord>, PgError> {
    let mut records = HashMap::with_capacity(ids.len());
    if !lock {
        let rows = sqlx::query(LOAD_RECORDS)
            .bind(ids)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let job_id: String = row.try_get("job_id")?;
            if row.try_get::<i32, _>("position")? < 0 {
                let job: Job = json(row, "body")?;
                records.insert(
                    job_id,
                    JobRecord {
                        job,
                        tasks: Vec::new(),
                    },
                );
            } else if let Some(r) = records.get_mut(&job_id) {
                r.tasks.push(json(row, "body")?);
            }
        }
        return Ok(records);
    }
    let jobs = sqlx::query(LOCK_JOBS)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    for row in &jobs {
        let job: Job = json(row, "body")?;
        records.insert(
            row.try_get::<String, _>("job_id")?,
            JobRecord {
                job,
                tasks: Vec::new(),
            },
        );
    }
    if records.is_empty() {
        return Ok(records);
    }
    let found: Vec<&str> = records.keys().map(String::as_str).collect();
    let tasks = sqlx::query(LOAD_TASKS)
        .bind(found)
        .fetch_all(&mut *conn)
        .await?;
    for row in &tasks {
        let job_id: &str = row.try_get("job_id")?;
        let task: Task = json(row, "body")?;
        if let Some(r) = records.get_mut(job_id) {
            r.tasks.push(task);
        }
    }
    Ok(records)
}

/// The job row alone.
pub(super) async fn load_job(conn: &mut PgConnection, id: &JobId) -> Result<Option<Job>, PgError> {
    let row = sqlx::query("SELECT body::text AS body FROM jobs WHERE job_id = $1")
        .bind(id.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(|r| json(&r, "body")).transpose()
}

/// A page of jobs, newest first. `seq` is the cursor: pages are stable under inserts.
pub(super) async fn list_jobs(
    conn: &mut PgConnection,
    filter: &JobFilter,
) -> Result<JobPage, PgError> {
    let before = match &filter.cursor {
        Some(c) => c
            .parse::<u64>()
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX))
            .map_err(|_| StoreError::NotFound(format!("cursor `{c}`")))?,
        None => i64::MAX,
    };
    // Only the filters that are set appear in the statement, so the planner can walk the
    // index of the filtered column (`(col, seq)`) backwards instead of scanning every job. Every
    // fragment is a literal and every value is bound: there are eight possible texts.
    let mut sql = String::from("SELECT seq, body::text AS body FROM jobs WHERE seq < $1");
    let mut n = 1;
    let mut next = |col: &str, sql: &mut String| {
        n += 1;
        sql.push_str(&format!(" AND {col} = ${n}"));
    };
    if filter.status.is_some() {
        next("status", &mut sql);
    }
    if filter.tenant.is_some() {
        next("tenant", &mut sql);
    }
    if filter.job_type.is_some() {
        next("job_type", &mut sql);
    }
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ${}", n + 1));
    let mut q = sqlx::query(AssertSqlSafe(sql)).bind(before);
    if let Some(s) = filter.status {
        q = q.bind(s.as_str());
    }
    if let Some(t) = &filter.tenant {
        q = q.bind(t.as_str());
    }
    if let Some(t) = &filter.job_type {
        q = q.bind(t.as_str());
    }
    let rows = q.bind(i64::from(filter.limit)).fetch_all(conn).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    let mut last = None;
    for r in &rows {
        jobs.push(json(r, "body")?);
        last = Some(r.try_get::<i64, _>("seq")?);
    }
    // Only hand out a cursor when a further page may exist.
    let next_cursor = last
        .filter(|_| jobs.len() == filter.limit as usize)
        .map(|seq| seq.to_string());
    Ok(JobPage { jobs, next_cursor })
}

/// A page of one job's tasks in planning order, with the count of all matches; `None` when
/// the job does not exist.
pub(super) async fn list_tasks(
    conn: &mut PgConnection,
    job_id: &JobId,
    filter: &TaskFilter,
) -> Result<Option<TaskPage>, PgError> {
    // One statement: the job's existence, the count of matches and the page, from one snapshot.
    let rows = sqlx::query(
        "WITH m AS (
             SELECT position, body FROM tasks WHERE job_id = $1
                 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR worker_id = $3))
         SELECT (SELECT COUNT(*) FROM m) AS total,
                EXISTS (SELECT 1 FROM jobs WHERE job_id = $1) AS found,
                p.body
         FROM (SELECT 1) AS one
         LEFT JOIN LATERAL (
             SELECT body::text AS body FROM m ORDER BY position LIMIT $4 OFFSET $5) p ON true",
    )
    .bind(job_id.as_str())
    .bind(filter.status.map(|s| s.as_str()))
    .bind(filter.worker_id.as_ref().map(|w| w.as_str()))
    .bind(filter.limit.map(i64::from))
    .bind(i64::from(filter.offset))
    .fetch_all(conn)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    if !first.try_get::<bool, _>("found")? {
        return Ok(None);
    }
    let total: i64 = first.try_get("total")?;
    let mut tasks = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.try_get::<Option<&str>, _>("body")?.is_some() {
            tasks.push(json(r, "body")?);
        }
    }
    Ok(Some(TaskPage {
        total: u64::try_from(total).unwrap_or(0),
        tasks,
    }))
}
