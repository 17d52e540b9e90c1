//! SQLite store: jobs, tasks, workers and the outbox in one embedded database file.
//!
//! Writes go through the single writer connection of [`SqliteDb`] in `BEGIN IMMEDIATE`
//! transactions; reads use the read pool and see the last committed state. With
//! [`Dispatch::Direct`] the ready entries land in the `queue_entries` table of the same file,
//! in the same transaction, for a [`SqliteLeaseQueue`](crate::queue::sqlite::SqliteLeaseQueue)
//! on the same [`SqliteDb`] to hand out.

use async_trait::async_trait;
use foldhash::{HashMap, HashMapExt};
use rusqlite::{Connection, OptionalExtension};

pub use self::audit::SqliteAuditLog;
pub use self::db::SqliteDb;
pub(crate) use self::db::store_err;
pub(crate) use self::rows::id as row_id;
use self::rows::worker_from_row;
pub(crate) use self::rows::{
    ENTRY_COLUMNS, entry_at, entry_columns, entry_from_row, entry_params, entry_placeholders,
    opt_id, to_json, ts,
};
use super::{
    ApplyFn, ClaimApplyFn, ClaimRequest, CreateOutcome, Dispatch, DispatchOutbox, IdempotencyClaim,
    JobFilter, JobPage, JobStore, LeaseRenewal, NewJobWrite, StoreError, TaskFilter, TaskPage,
    WorkerStore,
};
use crate::clock::to_millis;
use crate::domain::{
    Heartbeat, IdempotencyKey, Job, JobId, JobRecord, Lease, LeaseId, QueueEntry, Status,
    TaskChunk, TaskRef, TenantId, Timestamp, Worker, WorkerId, WorkerRegistration,
};

mod audit;
mod cache;
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
mod writer;

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
    /// then the job rows, task rows and ready entries of the fresh ones.
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    async fn create_jobs(
        &self,
        jobs: &[NewJobWrite<'_>],
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        let encoded = jobs
            .iter()
            .map(|j| jobs::NewRows::encode(j.record))
            .collect::<Result<Vec<_>, _>>()?;
        self.db
            .write_cached(|tx, cache| {
                let mut outcomes = Vec::with_capacity(jobs.len());
                let mut fresh = Vec::with_capacity(jobs.len());
                for (j, rows) in jobs.iter().zip(&encoded) {
                    if let Some(claim) = j.idempotency
                        && let Some(replayed) = claim_key(tx, claim, j.record)?
                    {
                        outcomes.push(replayed);
                        continue;
                    }
                    outcomes.push(CreateOutcome::Created);
                    fresh.push((j, rows));
                }
                let rows: Vec<&jobs::NewRows<'_>> = fresh.iter().map(|(_, r)| *r).collect();
                // A job id used before fails the insert on `jobs.job_id`'s uniqueness, and
                // the error rolls the whole batch back.
                jobs::insert_jobs(tx, &rows).map_err(|e| match store_err(e) {
                    StoreError::Conflict(_) => taken_id(&fresh),
                    other => other,
                })?;
                let ready: Vec<QueueEntry> = fresh
                    .iter()
                    .flat_map(|(j, _)| j.ready.iter().cloned())
                    .collect();
                update::dispatch(tx, self.dispatch, &ready)?;
                for (_, rows) in &fresh {
                    cache.put(rows.kept.clone());
                }
                Ok(outcomes)
            })
            .await
    }

    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError> {
        self.db
            .read(|tx| idempotency_row(tx, tenant, key))
            .map_err(store_err)
    }

    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        // A read transaction, so the job row and its task rows come from one snapshot.
        self.db
            .read(|tx| jobs::load_record(tx, id))
            .map_err(store_err)
    }

    async fn stale_jobs(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .read(|tx| {
                tx.prepare_cached(jobs::STALE_JOBS)?
                    .query_map((to_millis(before), limit), |r| row_id(r, "job_id"))?
                    .collect::<rusqlite::Result<Vec<JobId>>>()
            })
            .map_err(store_err)
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.db.read(|tx| jobs::load_job(tx, id)).map_err(store_err)
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        self.db.read(|tx| jobs::list_jobs(tx, filter))
    }

    async fn list_tasks(
        &self,
        job_id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, StoreError> {
        self.db
            .read(|tx| jobs::list_tasks(tx, job_id, filter))
            .map_err(store_err)?
            .ok_or_else(|| StoreError::NotFound(format!("job {job_id}")))
    }

    /// The whole batch is one transaction: reports for many jobs commit together, which is
    /// where the throughput comes from.
    ///
    /// When the writer's cache holds every job's committed record, the rules run and the rows
    /// are encoded before the writer is taken, beside other writes; under the writer the
    /// change is written as prepared if none of its jobs changed meanwhile, and otherwise
    /// applied afresh (rules may run more than once, see [`ApplyFn`]).
    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let prepared = match self.db.committed_records(ids) {
            Some(loaded) => Some(update::Prepared::new(&loaded, ids, apply).map_err(store_err)?),
            None => None,
        };
        let mode = self.dispatch;
        self.db
            .write_cached(move |tx, cache| match prepared {
                Some(p) if p.is_current(cache) => p.write(tx, cache, mode),
                _ => update::update_jobs(tx, cache, mode, ids, apply),
            })
            .await
            .map_err(store_err)
    }

    /// With `Direct` dispatch the queue table is in this database: acks are deletes in the
    /// change's own transaction.
    fn acks_with_changes(&self) -> bool {
        self.dispatch == Dispatch::Direct
    }

    /// With `Direct` dispatch: the claim, the rules and their rows in one write, one writer
    /// turn and one commit where a claim followed by `update_jobs` takes two. Whether anything
    /// is claimable is asked of a reader first, as the queue's own claim does, so idle
    /// workers' long-polls stay off the writer.
    async fn claim_and_update(
        &self,
        claim: &ClaimRequest<'_>,
        apply: &mut ClaimApplyFn<'_>,
    ) -> Result<Option<Vec<Lease>>, StoreError> {
        if self.dispatch != Dispatch::Direct {
            return Ok(None);
        }
        let claim = crate::queue::sqlite::Claim::new(*claim).map_err(store_err)?;
        if !claim.any(&self.db).map_err(store_err)? {
            return Ok(Some(Vec::new()));
        }
        let mode = self.dispatch;
        let leases = self
            .db
            .write_cached(|tx, cache| {
                let leases = claim.run(tx)?;
                let mut by_job: HashMap<&JobId, Vec<&Lease>> = HashMap::with_capacity(leases.len());
                let mut ids = Vec::with_capacity(leases.len());
                for l in &leases {
                    by_job
                        .entry(&l.entry.job_id)
                        .or_insert_with(|| {
                            ids.push(l.entry.job_id.clone());
                            Vec::new()
                        })
                        .push(l);
                }
                update::update_jobs(tx, cache, mode, &ids, &mut |record: &mut JobRecord| {
                    let mine = by_job
                        .get(&record.job.job_id)
                        .map_or(&[][..], Vec::as_slice);
                    apply(record, mine)
                })?;
                drop(by_job);
                Ok::<_, rusqlite::Error>(leases)
            })
            .await
            .map_err(store_err)?;
        Ok(Some(leases))
    }

    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        self.db
            .write_cached(|tx, cache| update::renew_leases(tx, cache, renewals, until))
            .await
            .map_err(store_err)
    }

    async fn prune_finished(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        self.db
            .write_cached(|tx, cache| {
                let pruned = prune::prune_finished(tx, before, limit)?;
                for id in &pruned {
                    cache.forget(id);
                }
                Ok(pruned)
            })
            .await
            .map_err(store_err)
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
        chunks::after(&self.db, task, after, limit)
    }
}

/// The conflict of a batch insert that hit a job id already in use, naming it when the
/// batch has one job.
fn taken_id(fresh: &[(&NewJobWrite<'_>, &jobs::NewRows<'_>)]) -> StoreError {
    match fresh {
        [(one, _)] => StoreError::Conflict(format!("job {} already exists", one.record.job.job_id)),
        _ => StoreError::Conflict("a job id of the batch already exists".into()),
    }
}

/// Writes the key row of a keyed submit; `Some(Replayed)` when the key was already used.
fn claim_key(
    conn: &Connection,
    claim: &IdempotencyClaim,
    record: &JobRecord,
) -> rusqlite::Result<Option<CreateOutcome>> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO idempotency_keys (tenant, idem_key, job_id, request_hash, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute((
            claim.tenant.as_str(),
            claim.key.as_str(),
            record.job.job_id.as_str(),
            &claim.request_hash,
            to_millis(record.job.created_at),
        ))?;
    if inserted > 0 {
        return Ok(None);
    }
    let (job_id, request_hash) = idempotency_row(conn, &claim.tenant, &claim.key)?
        .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok(Some(CreateOutcome::Replayed {
        job_id,
        request_hash,
    }))
}

fn idempotency_row(
    conn: &Connection,
    tenant: &TenantId,
    key: &IdempotencyKey,
) -> rusqlite::Result<Option<(JobId, String)>> {
    conn.prepare_cached(
        "SELECT job_id, request_hash FROM idempotency_keys WHERE tenant = ?1 AND idem_key = ?2",
    )?
    .query_row((tenant.as_str(), key.as_str()), |r| {
        Ok((rows::id(r, "job_id")?, r.get("request_hash")?))
    })
    .optional()
}

#[async_trait]
impl WorkerStore for SqliteStore {
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let registration = to_json(registration)?;
        let load = to_json(&Heartbeat::default())?;
        self.db
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO workers (worker_id, registration, load_figures,
                                          registered_at_ms, last_heartbeat_ms)
                     VALUES (?1, ?2, ?3, ?4, ?4)
                     ON CONFLICT (worker_id) DO UPDATE SET
                         registration = excluded.registration,
                         load_figures = excluded.load_figures,
                         registered_at_ms = excluded.registered_at_ms,
                         last_heartbeat_ms = excluded.last_heartbeat_ms",
                )?
                .execute((id.as_str(), &registration, &load, to_millis(at)))
            })
            .await?;
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let load = to_json(heartbeat)?;
        let updated = self
            .db
            .write(|tx| {
                tx.prepare_cached(
                    "UPDATE workers SET load_figures = ?2, last_heartbeat_ms = ?3
                     WHERE worker_id = ?1",
                )?
                .execute((id.as_str(), &load, to_millis(at)))
            })
            .await?;
        Ok(updated > 0)
    }

    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError> {
        self.db
            .read(|tx| {
                tx.prepare_cached("SELECT * FROM workers WHERE worker_id = ?1")?
                    .query_row([id.as_str()], |r| worker_from_row(r, stale_before))
                    .optional()
            })
            .map_err(store_err)
    }

    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError> {
        self.db
            .read(|tx| {
                tx.prepare_cached("SELECT * FROM workers ORDER BY worker_id")?
                    .query_map([], |r| worker_from_row(r, stale_before))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(store_err)
    }
}

/// The oldest `?1` outbox entries.
const PENDING_OUTBOX: &str = concat!(
    "SELECT id, ",
    entry_columns!(),
    " FROM outbox ORDER BY id LIMIT (SELECT ?1)"
);

#[async_trait]
impl DispatchOutbox for SqliteStore {
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
        if self.dispatch == Dispatch::Direct {
            // Direct mode never writes the outbox.
            return Ok(Vec::new());
        }
        self.db
            .read(|tx| {
                tx.prepare_cached(PENDING_OUTBOX)?
                    .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                        Ok((r.get("id")?, entry_from_row(r)?))
                    })?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(store_err)
    }

    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        if self.dispatch == Dispatch::Direct || ids.is_empty() {
            return Ok(());
        }
        self.db
            .write(|tx| {
                let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in ids {
                    delete.execute([id])?;
                }
                Ok::<_, rusqlite::Error>(())
            })
            .await?;
        Ok(())
    }
}

/// How many times SQLite prepared `sql` again over three runs, each binding every parameter
/// to a different small integer. The runs are rolled back, so they change nothing.
#[cfg(test)]
pub(crate) async fn reprepares(db: &SqliteDb, sql: &str) -> i32 {
    db.write(|tx| {
        tx.execute_batch("SAVEPOINT probe")?;
        let mut st = tx.prepare(sql)?;
        for run in 1..=3_i64 {
            for p in 1..=st.parameter_count() {
                st.raw_bind_parameter(p, run)?;
            }
            let mut rows = st.raw_query();
            while rows.next()?.is_some() {}
        }
        let n = st.get_status(rusqlite::StatementStatus::RePrepare);
        drop(st);
        tx.execute_batch("ROLLBACK TO probe; RELEASE probe")?;
        Ok::<_, rusqlite::Error>(n)
    })
    .await
    .unwrap()
}

/// The query plan SQLite chooses for `sql`, one step per line.
#[cfg(test)]
pub(crate) fn query_plan(db: &SqliteDb, sql: &str) -> String {
    db.read(|tx| {
        let mut st = tx.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        // Parameters stay unbound (NULL): the plan does not depend on their values.
        let mut rows = st.raw_query();
        let mut plan = Vec::new();
        while let Some(r) = rows.next()? {
            plan.push(r.get::<_, String>("detail")?);
        }
        Ok::<_, rusqlite::Error>(plan)
    })
    .unwrap()
    .join("\n")
}
