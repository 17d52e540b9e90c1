//! Postgres store: jobs, tasks, workers and the outbox in one database, for several gateway
//! processes at once.
//!
//! Every operation is one statement, or one short transaction, on a pooled connection, run
//! again from the start when the connection failed or Postgres aborted it as a deadlock or serialization victim
//! (`db.rs`). Writers of a job lock its row (`SELECT .. FOR UPDATE`, in job-id order), so
//! concurrent updates of one job from different processes take turns and never deadlock on
//! each other. With [`Dispatch::Direct`] the ready entries land in the `queue_entries` table of
//! the same database, in the same transaction, for a
//! [`PostgresLeaseQueue`](crate::queue::postgres::PostgresLeaseQueue) on the same [`PgDb`].

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

pub use self::audit::PostgresAuditLog;
pub use self::db::{DEFAULT_MAX_CONNECTIONS, PgDb};
pub(crate) use self::db::{PgError, attempts, backoff, commit, queue_err, store_err};
pub(crate) use self::rows::{
    EntryArrays, entry_columns, entry_from_row, id as row_id, opt_id, ts, unnest_entries,
};
use self::rows::{to_json, worker_from_row};
use super::{
    ApplyFn, CreateOutcome, Dispatch, DispatchOutbox, IdempotencyClaim, JobFilter, JobPage,
    JobStore, LeaseRenewal, NewJobWrite, StoreError, TaskFilter, TaskPage, WorkerStore,
};
use crate::clock::to_millis;
use crate::domain::{
    Heartbeat, IdempotencyKey, Job, JobId, JobRecord, LeaseId, QueueEntry, Status, TaskChunk,
    TaskRef, TenantId, Timestamp, Worker, WorkerId, WorkerRegistration,
};

/// Runs an operation (an `async` expression, re-evaluated per attempt) on `$db` until it
/// succeeds, fails for good, or has failed transiently a few times, pausing with backoff in
/// between; failures are reported to `$db` (`PgDb::note`).
macro_rules! retrying {
    ($db:expr, $what:expr, $op:expr) => {{
        let mut attempt = 1_u32;
        loop {
            let out = $op.await;
            if let Err(e) = &out {
                $db.note(e);
            }
            match out {
                Err(e) if e.is_transient() && attempt < $crate::store::postgres::attempts() => {
                    tracing::warn!(op = $what, attempt, error = ?e, "postgres operation failed; retrying");
                    tokio::time::sleep($crate::store::postgres::backoff(attempt)).await;
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}
pub(crate) use retrying;

/// Runs `body` (a block evaluating to `Result<T, PgError>`, with `conn` bound to the
/// transaction's connection) in a transaction, retried as a whole on a transient failure.
macro_rules! in_tx {
    ($db:expr, $what:expr, |$conn:ident| $body:block) => {
        $crate::store::postgres::retrying!($db, $what, async {
            let mut tx = $db.begin().await?;
            let out = {
                let $conn: &mut sqlx::PgConnection = &mut *tx;
                let out: Result<_, $crate::store::postgres::PgError> = async { $body }.await;
                out?
            };
            $crate::store::postgres::commit(tx).await?;
            Ok::<_, $crate::store::postgres::PgError>(out)
        })
    };
}
pub(crate) use in_tx;

/// Runs `body` (a block evaluating to `Result<T, PgError>`, with `conn` bound to a pooled
/// connection) without a transaction, retried as a whole on a transient failure: for
/// operations that are one statement, which Postgres runs atomically on its own, so BEGIN and
/// COMMIT would only add two round trips.
macro_rules! on_conn {
    ($db:expr, $what:expr, |$conn:ident| $body:block) => {
        $crate::store::postgres::retrying!($db, $what, async {
            let mut pooled = $db.acquire().await?;
            let $conn: &mut sqlx::PgConnection = &mut *pooled;
            let out: Result<_, $crate::store::postgres::PgError> = async { $body }.await;
            out
        })
    };
}
pub(crate) use on_conn;

mod audit;
mod chunks;
mod db;
mod jobs;
mod locks;
mod prune;
mod rows;
#[cfg(test)]
mod tests;
mod update;
mod webhooks;

/// [`JobStore`], [`WorkerStore`] and [`DispatchOutbox`] on a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    db: PgDb,
    dispatch: Dispatch,
}

impl PostgresStore {
    /// A store on `db` that dispatches ready entries as `dispatch` says: `Direct` into the
    /// database's own queue table (pair it with a `PostgresLeaseQueue` on the same `db`), or
    /// `Outbox` for a relay to an external queue.
    pub fn new(db: PgDb, dispatch: Dispatch) -> Self {
        Self { db, dispatch }
    }

    async fn try_create(
        &self,
        jobs: &[NewJobWrite<'_>],
        encoded: &[jobs::NewRows<'_>],
    ) -> Result<Vec<CreateOutcome>, PgError> {
        let mut tx = self.db.begin().await?;
        let outcomes = claim_keys(&mut tx, jobs).await?;
        let fresh: Vec<usize> = (0..jobs.len())
            .filter(|&i| outcomes[i] == CreateOutcome::Created)
            .collect();
        let rows: Vec<&jobs::NewRows<'_>> = fresh.iter().map(|&i| &encoded[i]).collect();
        // A job id used before fails the insert on `jobs.job_id`'s uniqueness, and the error
        // rolls the whole batch back.
        jobs::insert_jobs(&mut tx, &rows)
            .await
            .map_err(|e| match store_err(e) {
                StoreError::Conflict(_) => PgError::Store(taken_id(&rows)),
                other => PgError::Store(other),
            })?;
        let ready: Vec<QueueEntry> = fresh
            .iter()
            .flat_map(|&i| jobs[i].ready.iter().cloned())
            .collect();
        update::dispatch(&mut tx, self.dispatch, &ready).await?;
        commit(tx).await?;
        Ok(outcomes)
    }

    async fn try_update(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), PgError> {
        let mut tx = self.db.begin().await?;
        update::update_jobs(&mut tx, self.dispatch, ids, apply).await?;
        commit(tx).await
    }

    async fn try_renew(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, PgError> {
        let mut tx = self.db.begin().await?;
        let out = update::renew_leases(&mut tx, renewals, until).await?;
        commit(tx).await?;
        Ok(out)
    }
}

/// The conflict of a batch insert that hit a job id already in use, naming it when the batch
/// has one job.
fn taken_id(rows: &[&jobs::NewRows<'_>]) -> StoreError {
    match rows {
        [one] => StoreError::Conflict(format!("job {} already exists", one.record.job.job_id)),
        _ => StoreError::Conflict("a job id of the batch already exists".into()),
    }
}

/// Writes the key rows of a batch's keyed jobs and decides each job's outcome: `Replayed` when
/// its key was used by an earlier request or an earlier job of the batch, else `Created`.
async fn claim_keys(
    conn: &mut PgConnection,
    jobs: &[NewJobWrite<'_>],
) -> Result<Vec<CreateOutcome>, PgError> {
    let mut outcomes = vec![CreateOutcome::Created; jobs.len()];
    // The first job of the batch to use each key; later ones replay whatever it gets.
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(c) = j.idempotency {
            match first.entry((c.tenant.as_str(), c.key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
    }
    if first.is_empty() {
        return Ok(outcomes);
    }
    let mut claimed: Vec<(usize, &IdempotencyClaim)> = first
        .values()
        .map(|&i| (i, jobs[i].idempotency.expect("only keyed jobs are listed")))
        .collect();
    claimed.sort_unstable_by_key(|(i, _)| *i);
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant, idem_key, job_id, request_hash, created_at_ms)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[])
         ON CONFLICT DO NOTHING
         RETURNING tenant, idem_key",
    )
    .bind(
        claimed
            .iter()
            .map(|(_, c)| c.tenant.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        claimed
            .iter()
            .map(|(_, c)| c.key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        claimed
            .iter()
            .map(|&(i, _)| jobs[i].record.job.job_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        claimed
            .iter()
            .map(|(_, c)| c.request_hash.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        claimed
            .iter()
            .map(|&(i, _)| to_millis(jobs[i].record.job.created_at))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut taken: Vec<(usize, &IdempotencyClaim)> = claimed.clone();
    for row in &inserted {
        let (t, k): (&str, &str) = (row.try_get("tenant")?, row.try_get("idem_key")?);
        taken.retain(|(_, c)| (c.tenant.as_str(), c.key.as_str()) != (t, k));
    }
    if !taken.is_empty() {
        // Keys used before: replay the job each one created.
        let rows = sqlx::query(
            "SELECT i.tenant, i.idem_key, i.job_id, i.request_hash
             FROM UNNEST($1::text[], $2::text[]) AS r(t, k)
             JOIN idempotency_keys i ON i.tenant = r.t AND i.idem_key = r.k",
        )
        .bind(
            taken
                .iter()
                .map(|(_, c)| c.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            taken
                .iter()
                .map(|(_, c)| c.key.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
        for row in &rows {
            let (t, k): (&str, &str) = (row.try_get("tenant")?, row.try_get("idem_key")?);
            if let Some(&i) = first.get(&(t, k)) {
                outcomes[i] = CreateOutcome::Replayed {
                    job_id: row_id(row, "job_id")?,
                    request_hash: row.try_get("request_hash")?,
                };
            }
        }
    }
    for (i, f) in repeats {
        outcomes[i] = match &outcomes[f] {
            CreateOutcome::Created => CreateOutcome::Replayed {
                job_id: jobs[f].record.job.job_id.clone(),
                request_hash: jobs[f]
                    .idempotency
                    .map(|c| c.request_hash.clone())
                    .unwrap_or_default(),
            },
            replayed => replayed.clone(),
        };
    }
    Ok(outcomes)
}

/// Unfinished jobs with a task waiting since before `$1` (queued in a job not changed since,
/// or running on a lease that ran out before it), least recently changed first, at most
/// `$2`: the reconciliation's candidates. Walks the unfinished jobs of `jobs_by_status`; the
/// sweep runs it rarely.
const STALE_JOBS: &str = "SELECT job_id FROM jobs
    WHERE status IN ('Queued', 'Running')
      AND EXISTS (SELECT 1 FROM tasks WHERE tasks.job_id = jobs.job_id
          AND ((tasks.status = 'Queued' AND jobs.updated_at_ms < $1)
            OR (tasks.status = 'Running' AND tasks.lease_expires_ms < $1)))
    ORDER BY updated_at_ms LIMIT $2";

#[async_trait]
impl JobStore for PostgresStore {
    /// One transaction for the whole batch: the key rows of keyed jobs (to detect repeats),
    /// then the job rows, task rows and ready entries of the fresh ones, one statement each.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    async fn create_jobs(
        &self,
        jobs: &[NewJobWrite<'_>],
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = jobs
            .iter()
            .map(|j| jobs::NewRows::encode(j.record))
            .collect::<Result<Vec<_>, _>>()?;
        retrying!(self.db, "create_jobs", self.try_create(jobs, &encoded)).map_err(store_err)
    }

    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError> {
        on_conn!(self.db, "find_idempotency", |conn| {
            let row = sqlx::query(
                "SELECT job_id, request_hash FROM idempotency_keys
                 WHERE tenant = $1 AND idem_key = $2",
            )
            .bind(tenant.as_str())
            .bind(key.as_str())
            .fetch_optional(conn)
            .await?;
            match row {
                Some(r) => Ok(Some((row_id(&r, "job_id")?, r.try_get("request_hash")?))),
                None => Ok(None),
            }
        })
        .map_err(store_err)
    }

    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        // One statement reads the job row and its task rows, so they come from one snapshot.
        on_conn!(self.db, "load_job", |conn| {
            let mut found = jobs::load_records(conn, &[id.as_str()], false).await?;
            Ok(found.remove(id.as_str()))
        })
        .map_err(store_err)
    }

    async fn stale_jobs(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let (before, limit) = (to_millis(before), i64::try_from(limit).unwrap_or(i64::MAX));
        on_conn!(self.db, "stale_jobs", |conn| {
            let rows = sqlx::query(STALE_JOBS)
                .bind(before)
                .bind(limit)
                .fetch_all(conn)
                .await?;
            rows.iter().map(|r| row_id(r, "job_id")).collect()
        })
        .map_err(store_err)
    }

    async fn prune_finished(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        let (before, limit) = (to_millis(before), i64::try_from(limit).unwrap_or(i64::MAX));
        in_tx!(self.db, "prune_finished", |conn| {
            prune::prune_finished(conn, before, limit).await
        })
        .map_err(store_err)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        on_conn!(self.db, "get_job", |conn| {
            jobs::load_job(conn, id).await
        })
        .map_err(store_err)
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        on_conn!(self.db, "list_jobs", |conn| {
            jobs::list_jobs(conn, filter).await
        })
        .map_err(store_err)
    }

    async fn list_tasks(
        &self,
        job_id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, StoreError> {
        on_conn!(self.db, "list_tasks", |conn| {
            jobs::list_tasks(conn, job_id, filter).await
        })
        .map_err(store_err)?
        .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))
    }

    /// The whole batch is one transaction: the batch's job rows are locked in job-id order,
    /// loaded with their tasks in two statements, and the diff written in at most four.
    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        retrying!(self.db, "update_jobs", self.try_update(ids, &mut *apply)).map_err(store_err)
    }

    /// With `Direct` dispatch the queue table is in this database: acks are deletes in the
    /// change's own transaction.
    fn acks_with_changes(&self) -> bool {
        self.dispatch == Dispatch::Direct
    }

    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        retrying!(self.db, "renew_leases", self.try_renew(renewals, until)).map_err(store_err)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(store_err)
    }

    async fn append_chunks(
        &self,
        task: &TaskRef,
        lease: &LeaseId,
        first_seq: u32,
        texts: &[String],
    ) -> Result<bool, StoreError> {
        chunks::append(&self.db, task, lease, first_seq, texts).await
    }

    async fn chunks_after(
        &self,
        task: &TaskRef,
        after: i64,
        limit: usize,
    ) -> Result<Vec<TaskChunk>, StoreError> {
        chunks::after(&self.db, task, after, limit).await
    }
}

#[async_trait]
impl WorkerStore for PostgresStore {
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let registration = to_json(registration)?;
        let load = to_json(&Heartbeat::default())?;
        on_conn!(self.db, "register_worker", |conn| {
            sqlx::query(
                "INSERT INTO workers (worker_id, registration, load_figures,
                                      registered_at_ms, last_heartbeat_ms)
                 VALUES ($1, $2::json, $3::json, $4, $4)
                 ON CONFLICT (worker_id) DO UPDATE SET
                     registration = excluded.registration,
                     load_figures = excluded.load_figures,
                     registered_at_ms = excluded.registered_at_ms,
                     last_heartbeat_ms = excluded.last_heartbeat_ms",
            )
            .bind(id.as_str())
            .bind(&registration)
            .bind(&load)
            .bind(to_millis(at))
            .execute(conn)
            .await?;
            Ok(())
        })
        .map_err(store_err)
    }

    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let load = to_json(heartbeat)?;
        on_conn!(self.db, "record_heartbeat", |conn| {
            let done = sqlx::query(
                "UPDATE workers SET load_figures = $2::json, last_heartbeat_ms = $3
                 WHERE worker_id = $1",
            )
            .bind(id.as_str())
            .bind(&load)
            .bind(to_millis(at))
            .execute(conn)
            .await?;
            Ok(done.rows_affected() > 0)
        })
        .map_err(store_err)
    }

    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError> {
        on_conn!(self.db, "get_worker", |conn| {
            let row = sqlx::query(concat!(
                "SELECT worker_id, registration::text AS registration, ",
                "load_figures::text AS load_figures, registered_at_ms, last_heartbeat_ms ",
                "FROM workers WHERE worker_id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(conn)
            .await?;
            row.map(|r| worker_from_row(&r, stale_before)).transpose()
        })
        .map_err(store_err)
    }

    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError> {
        on_conn!(self.db, "list_workers", |conn| {
            let rows = sqlx::query(concat!(
                "SELECT worker_id, registration::text AS registration, ",
                "load_figures::text AS load_figures, registered_at_ms, last_heartbeat_ms ",
                "FROM workers ORDER BY worker_id"
            ))
            .fetch_all(conn)
            .await?;
            rows.iter()
                .map(|r| worker_from_row(r, stale_before))
                .collect()
        })
        .map_err(store_err)
    }
}

#[async_trait]
impl DispatchOutbox for PostgresStore {
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
        if self.dispatch == Dispatch::Direct {
            // Direct mode never writes the outbox.
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_conn!(self.db, "pending_dispatch", |conn| {
            let rows = sqlx::query(concat!(
                "SELECT id, ",
                entry_columns!(),
                " FROM outbox ORDER BY id LIMIT $1"
            ))
            .bind(limit)
            .fetch_all(conn)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("id")?, entry_from_row(r)?)))
                .collect()
        })
        .map_err(store_err)
    }

    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        if self.dispatch == Dispatch::Direct || ids.is_empty() {
            return Ok(());
        }
        on_conn!(self.db, "mark_dispatched", |conn| {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(ids)
                .execute(conn)
                .await?;
            Ok(())
        })
        .map_err(store_err)
    }
}
