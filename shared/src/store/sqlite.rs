//! SQLite store: jobs, tasks, workers and the outbox in one embedded database file.
//!
//! Writes go through the single writer connection of [`SqliteDb`] in `BEGIN IMMEDIATE`
//! transactions; reads use the read pool and see the last committed state. With
//! [`Dispatch::Direct`] the ready entries land in the `queue_entries` table of the same file,
//! in the same transaction, for a [`SqliteLeaseQueue`](crate::queue::sqlite::SqliteLeaseQueue)
//! on the same [`SqliteDb`] to hand out.

use async_trait::async_trait;
use sqlx::Row;

pub(crate) use self::batch::{execute as execute_batch, values_with as batch_values_with};
pub use self::db::SqliteDb;
pub(crate) use self::db::{queue_err, store_err};
pub(crate) use self::rows::id as row_id;
use self::rows::worker_from_row;
pub(crate) use self::rows::{
    ENTRY_COLUMNS, bind_entry, entry_columns, entry_from_row, opt_id, to_json, ts,
};
use super::{
    ApplyFn, CreateOutcome, Dispatch, DispatchOutbox, IdempotencyClaim, JobFilter, JobPage,
    JobStore, LeaseRenewal, NewJobWrite, StoreError, TaskFilter, TaskPage, WorkerStore,
};
use crate::clock::to_millis;
use crate::domain::{
    Heartbeat, IdempotencyKey, Job, JobId, JobRecord, QueueEntry, Status, TenantId, Timestamp,
    Worker, WorkerId, WorkerRegistration,
};

mod batch;
mod db;
mod jobs;
mod rows;
#[cfg(test)]
mod tests;
mod update;

/// [`JobStore`], [`WorkerStore`] and [`DispatchOutbox`] on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    db: SqliteDb,
    dispatch: Dispatch,
}

impl SqliteStore {
    /// A store on `db` that dispatches ready entries as `dispatch` says: `Direct` into the
    /// database's own queue table (pair it with a `SqliteLeaseQueue` on the same `db`), or
    /// `Outbox` for a relay to an external queue.
    pub fn new(db: SqliteDb, dispatch: Dispatch) -> Self {
        Self { db, dispatch }
    }
}

#[async_trait]
impl JobStore for SqliteStore {
    /// One transaction for the whole batch: a key row per keyed job (to detect repeats),
    /// then one statement each for all job rows, all task rows and all ready entries.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    async fn create_jobs(
        &self,
        jobs: &[NewJobWrite<'_>],
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        let mut tx = self.db.begin_write().await.map_err(store_err)?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        let mut fresh = Vec::with_capacity(jobs.len());
        for j in jobs {
            if let Some(claim) = j.idempotency
                && let Some(replayed) = claim_key(&mut tx, claim, j.record).await?
            {
                outcomes.push(replayed);
                continue;
            }
            outcomes.push(CreateOutcome::Created);
            fresh.push(j);
        }
        let records: Vec<&JobRecord> = fresh.iter().map(|j| j.record).collect();
        // A job id used before fails the insert on `jobs.job_id`'s uniqueness.
        jobs::insert_jobs(&mut tx, &records)
            .await
            .map_err(|e| match store_err(e) {
                StoreError::Conflict(_) => taken_id(&records),
                other => other,
            })?;
        let ready: Vec<QueueEntry> = fresh.iter().flat_map(|j| j.ready.iter().cloned()).collect();
        update::dispatch(&mut tx, self.dispatch, &ready)
            .await
            .map_err(store_err)?;
        tx.commit().await.map_err(store_err)?;
        Ok(outcomes)
    }

    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError> {
        let mut conn = self.db.reader().acquire().await.map_err(store_err)?;
        idempotency_row(&mut conn, tenant, key).await
    }

    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        // A read transaction, so the job row and its task rows come from one snapshot.
        let mut tx = self.db.begin_read().await.map_err(store_err)?;
        jobs::load_record(&mut tx, id).await.map_err(store_err)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let mut conn = self.db.reader().acquire().await.map_err(store_err)?;
        jobs::load_job(&mut conn, id).await.map_err(store_err)
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let mut conn = self.db.reader().acquire().await.map_err(store_err)?;
        jobs::list_jobs(&mut conn, filter).await
    }

    async fn list_tasks(
        &self,
        job_id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, StoreError> {
        let mut tx = self.db.begin_read().await.map_err(store_err)?;
        jobs::list_tasks(&mut tx, job_id, filter)
            .await
            .map_err(store_err)?
            .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))
    }

    /// The whole batch is one transaction of a fixed number of statements: reports for many
    /// jobs commit (and fsync) together, which is where the throughput comes from.
    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await.map_err(store_err)?;
        update::update_jobs(&mut tx, self.dispatch, ids, apply)
            .await
            .map_err(store_err)?;
        tx.commit().await.map_err(store_err)
    }

    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError> {
        let mut tx = self.db.begin_write().await.map_err(store_err)?;
        let out = update::renew_leases(&mut tx, renewals, until)
            .await
            .map_err(store_err)?;
        tx.commit().await.map_err(store_err)?;
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(store_err)
    }
}

/// The conflict of a batch insert that hit a job id already in use, naming it when the
/// batch has one job.
fn taken_id(records: &[&JobRecord]) -> StoreError {
    match records {
        [one] => StoreError::Conflict(format!("job {} already exists", one.job.job_id)),
        _ => StoreError::Conflict("a job id of the batch already exists".into()),
    }
}

/// Writes the key row of a keyed submit; `Some(Replayed)` when the key was already used.
async fn claim_key(
    conn: &mut sqlx::SqliteConnection,
    claim: &IdempotencyClaim,
    record: &JobRecord,
) -> Result<Option<CreateOutcome>, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant, idem_key, job_id, request_hash, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
    )
    .bind(claim.tenant.as_str())
    .bind(claim.key.as_str())
    .bind(record.job.job_id.as_str())
    .bind(&claim.request_hash)
    .bind(to_millis(record.job.created_at))
    .execute(&mut *conn)
    .await
    .map_err(store_err)?;
    if inserted.rows_affected() > 0 {
        return Ok(None);
    }
    let (job_id, request_hash) = idempotency_row(conn, &claim.tenant, &claim.key)
        .await?
        .ok_or_else(|| StoreError::Corrupt("idempotency key vanished".into()))?;
    Ok(Some(CreateOutcome::Replayed {
        job_id,
        request_hash,
    }))
}

async fn idempotency_row(
    conn: &mut sqlx::SqliteConnection,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> Result<Option<(JobId, String)>, StoreError> {
    let row = sqlx::query(
        "SELECT job_id, request_hash FROM idempotency_keys WHERE tenant = ?1 AND idem_key = ?2",
    )
    .bind(tenant.as_str())
    .bind(key.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(store_err)?;
    row.map(|r| Ok((rows::id(&r, "job_id")?, r.try_get("request_hash")?)))
        .transpose()
        .map_err(store_err)
}

#[async_trait]
impl WorkerStore for SqliteStore {
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (worker_id, registration, load_figures, registered_at_ms,
                                  last_heartbeat_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (worker_id) DO UPDATE SET
                 registration = excluded.registration, load_figures = excluded.load_figures,
                 registered_at_ms = excluded.registered_at_ms,
                 last_heartbeat_ms = excluded.last_heartbeat_ms",
        )
        .bind(id.as_str())
        .bind(to_json(registration).map_err(store_err)?)
        .bind(to_json(&Heartbeat::default()).map_err(store_err)?)
        .bind(to_millis(at))
        .execute(self.db.writer())
        .await
        .map_err(store_err)?;
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE workers SET load_figures = ?2, last_heartbeat_ms = ?3 WHERE worker_id = ?1",
        )
        .bind(id.as_str())
        .bind(to_json(heartbeat).map_err(store_err)?)
        .bind(to_millis(at))
        .execute(self.db.writer())
        .await
        .map_err(store_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError> {
        sqlx::query("SELECT * FROM workers WHERE worker_id = ?1")
            .bind(id.as_str())
            .fetch_optional(self.db.reader())
            .await
            .map_err(store_err)?
            .map(|row| worker_from_row(&row, stale_before))
            .transpose()
            .map_err(store_err)
    }

    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError> {
        sqlx::query("SELECT * FROM workers ORDER BY worker_id")
            .fetch_all(self.db.reader())
            .await
            .map_err(store_err)?
            .iter()
            .map(|row| worker_from_row(row, stale_before))
            .collect::<Result<_, _>>()
            .map_err(store_err)
    }
}

#[async_trait]
impl DispatchOutbox for SqliteStore {
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
        if self.dispatch == Dispatch::Direct {
            // Direct mode never writes the outbox.
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            entry_columns!(),
            " FROM outbox ORDER BY id LIMIT ?1"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.reader())
        .await
        .map_err(store_err)?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, entry_from_row(r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(store_err)
    }

    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        if self.dispatch == Dispatch::Direct || ids.is_empty() {
            return Ok(());
        }
        let ids = to_json(&ids).map_err(store_err)?;
        sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(ids)
            .execute(self.db.writer())
            .await
            .map_err(store_err)?;
        Ok(())
    }
}
