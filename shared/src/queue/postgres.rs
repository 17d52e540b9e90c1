//! Postgres lease queue: the `queue_entries` table of a [`PgDb`], shared with the store.
//!
//! One row per task; `seq` is its FIFO position and survives re-enqueue, `state` is `pending`,
//! `leased` or `dead`, and each state's rows sit in a partial index of their own. A claim is
//! one statement that locks the first admissible pending rows with `FOR UPDATE SKIP LOCKED`
//! and leases them, so concurrent claimers in any number of processes pass each other by
//! instead of queueing on the same rows. Every batch operation is one statement over arrays.
//!
//! **Wake-ups across processes.** Whatever makes entries claimable (enqueue, the store's
//! direct dispatch, nack, release, expiry, dead-letter requeue) also sends `NOTIFY
//! splai_queue` in its transaction; Postgres delivers it at commit to every listener. Each
//! queue runs one listener task (its own pooled connection, re-established after a failure)
//! that wakes this process's long-polling claimers through [`LeaseQueue::wake_source`].
//!
//! **Dead tuples.** Transitions are short transactions, acked entries are deleted, and the
//! table carries aggressive autovacuum settings; see `migrations/postgres/0001_init.sql`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::clock::{to_millis, truncate_millis};
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, Priority, QueueEntry, TaskRef, Timestamp,
    WorkerCaps,
};
use crate::store::postgres::{
    EntryArrays, PgDb, PgError, entry_columns, entry_from_row, in_tx, on_conn, opt_id, queue_err,
    row_id, ts, unnest_entries,
};

#[cfg(test)]
mod tests;

/// The channel claimable entries are announced on.
pub const CHANNEL: &str = "splai_queue";

/// Announces claimable entries to every listener, at commit.
const NOTIFY: &str = "SELECT pg_notify('splai_queue', '')";

/// Upserts entries from [`unnest_entries!`] arrays (one listing per task): an existing row
/// keeps its `seq` (its FIFO position) and loses any lease or dead-letter state. Announces
/// them in the same statement.
const UPSERT: &str = concat!(
    "WITH up AS (INSERT INTO queue_entries (",
    entry_columns!(),
    ", state) SELECT ",
    entry_columns!(),
    ", 'pending' FROM ",
    unnest_entries!(),
    " ORDER BY o
     ON CONFLICT (job_id, task_id) DO UPDATE SET
         tenant = excluded.tenant, priority_rank = excluded.priority_rank,
         requires_gpu = excluded.requires_gpu, backend = excluded.backend,
         model = excluded.model, target_worker = excluded.target_worker,
         attempt = excluded.attempt, max_attempts = excluded.max_attempts,
         not_before_ms = excluded.not_before_ms, state = 'pending',
         lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL,
         dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL
     RETURNING 1)
     SELECT pg_notify('splai_queue', '') WHERE EXISTS (SELECT 1 FROM up)"
);

/// Leases up to `$8` claimable entries to worker `$2` until `$3`, and returns them.
///
/// The inner SELECT walks the `queue_pending` index (`priority_rank`, `seq` of pending rows)
/// from its start: higher classes first, FIFO within a class, stopping at the limit, skipping
/// rows another claimer has locked. Its filter is
/// [`Requirements::admit`](crate::domain::Requirements::admit) in SQL (`$5` gpu, `$6`/`$7` the
/// worker's backends and models); `claim_filter_agrees_with_admit` holds the two to the same
/// answers. The outer UPDATE finds the chosen rows by primary key through `= ANY(ARRAY(..))`
/// rather than a join with the subquery: with a join, the generic plan of the prepared
/// statement (whose LIMIT is a parameter) hashes a sequential scan of the whole table.
///
/// Each lease id is the claim's fresh prefix `$1` (a time-ordered UUID) plus the row's rank
/// and zero-padded `seq`: unique without a random id per row, never reused because the prefix
/// is new for every claim, and sorting in claim order, which is how `expire` breaks ties.
pub(crate) const CLAIM: &str = concat!(
    "UPDATE queue_entries SET state = 'leased', attempt = attempt + 1,
         lease_id = $1 || priority_rank || '-' || lpad(seq::text, 19, '0'),
         leased_by = $2, lease_expires_ms = $3
     WHERE seq = ANY (ARRAY (
         SELECT seq FROM queue_entries
         WHERE state = 'pending' AND not_before_ms <= $4
           AND (NOT requires_gpu OR $5)
           AND (backend IS NULL OR backend = ANY ($6))
           AND (model IS NULL OR model = ANY ($7) OR '*' = ANY ($7))
           AND (target_worker IS NULL OR target_worker = $2)
         ORDER BY priority_rank, seq
         LIMIT $8
         FOR UPDATE SKIP LOCKED))
     RETURNING seq, ",
    entry_columns!(),
    ", lease_id, leased_by, lease_expires_ms"
);

/// Extends held leases `$1` to `$2`; returns the ones held.
const RENEW: &str = "UPDATE queue_entries SET lease_expires_ms = $2
    WHERE lease_id = ANY ($1) AND state = 'leased' RETURNING lease_id";

/// Removes leased entries `$1`.
const ACK: &str = "DELETE FROM queue_entries WHERE lease_id = ANY ($1) AND state = 'leased'";

/// Returns leased entries (`$1`) to pending from `$2` (per lease), and announces them. The
/// attempt count stays: the delivery happened.
const NACK: &str = "WITH u AS (UPDATE queue_entries q SET state = 'pending', not_before_ms = r.at,
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    FROM UNNEST($1::text[], $2::int8[]) AS r(l, at)
    WHERE q.lease_id = r.l AND q.state = 'leased' RETURNING 1)
    SELECT pg_notify('splai_queue', '') WHERE EXISTS (SELECT 1 FROM u)";

/// Returns leased entries `$1` to pending, taking back the attempt its claim counted, and
/// announces them.
const RELEASE: &str = "WITH u AS (UPDATE queue_entries SET state = 'pending',
        attempt = GREATEST(attempt - 1, 0),
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE lease_id = ANY ($1) AND state = 'leased' RETURNING 1)
    SELECT pg_notify('splai_queue', '') WHERE EXISTS (SELECT 1 FROM u)";

/// Moves leased entries (`$1`, reasons `$2`) to the dead letters at `$3`, numbered `$4` (fresh
/// numbers from `queue_dead_seq`, ascending in input order).
const BURY: &str = "UPDATE queue_entries q SET state = 'dead', dead_reason = r.reason,
        dead_at_ms = $3, dead_seq = r.n,
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    FROM UNNEST($1::text[], $2::text[], $4::int8[]) AS r(l, reason, n)
    WHERE q.lease_id = r.l AND q.state = 'leased'";

/// `$1` fresh dead-letter numbers. They come out of the sequence in the order they are drawn,
/// after every number drawn before; the caller sorts them, so the order of rows here does not
/// matter.
const DEAD_NUMBERS: &str = "SELECT nextval('queue_dead_seq') FROM generate_series(1, $1)";

/// Returns expired leases `$1` to pending.
const REQUEUE: &str = "UPDATE queue_entries SET state = 'pending',
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE lease_id = ANY ($1) AND state = 'leased'";

/// Drops tasks' entries (`$1` jobs, `$2` tasks) in any state.
const DISCARD: &str = "DELETE FROM queue_entries q USING UNNEST($1::text[], $2::text[]) AS r(j, t)
    WHERE q.job_id = r.j AND q.task_id = r.t";

/// Revives tasks' dead letters (`$1` jobs, `$2` tasks) as pending from `$3`.
const REVIVE: &str = "UPDATE queue_entries q SET state = 'pending', attempt = 0,
        not_before_ms = $3, dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL
    FROM UNNEST($1::text[], $2::text[]) AS r(j, t)
    WHERE q.job_id = r.j AND q.task_id = r.t AND q.state = 'dead'
    RETURNING q.job_id, q.task_id";

/// Leases that ran out by `$1`, in deadline order, locked (skipping any another sweeper holds).
const EXPIRED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", lease_id, leased_by, lease_expires_ms FROM queue_entries
     WHERE state = 'leased' AND lease_expires_ms <= $1
     ORDER BY lease_expires_ms, lease_id
     FOR UPDATE SKIP LOCKED"
);

/// The oldest `$1` dead letters.
const LIST_DEAD: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", dead_reason, dead_at_ms FROM queue_entries WHERE state = 'dead'
     ORDER BY dead_seq LIMIT $1"
);

/// The tasks among `$1`/`$2` (job ids, task ids, pairwise) that have an entry.
const HOLDS: &str = "SELECT q.job_id, q.task_id FROM queue_entries q
    JOIN UNNEST($1::text[], $2::text[]) AS t(job_id, task_id)
      ON q.job_id = t.job_id AND q.task_id = t.task_id";

/// Entries per state (and class, for pending ones); each part counts one partial index.
const DEPTH: &str = "SELECT 'pending' AS state, priority_rank, COUNT(*) AS n FROM queue_entries
        WHERE state = 'pending' GROUP BY priority_rank
    UNION ALL SELECT 'leased', 0::int2, COUNT(*) FROM queue_entries WHERE state = 'leased'
    UNION ALL SELECT 'dead', 0::int2, COUNT(*) FROM queue_entries WHERE state = 'dead'";

/// A [`LeaseQueue`] in the `queue_entries` table of a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresLeaseQueue {
    db: PgDb,
    wake: Arc<Notify>,
    _listener: Arc<Listener>,
}

/// Stops the listener task when the last handle of its queue goes.
#[derive(Debug)]
struct Listener(Option<tokio::task::JoinHandle<()>>);

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl PostgresLeaseQueue {
    /// A queue on `db`; give the store the same `db` with `Dispatch::Direct` so that ready
    /// entries are enqueued in the store's own transactions. Starts the `LISTEN` task on the
    /// current tokio runtime (it holds one of the pool's connections); outside a runtime there
    /// is none, and claimers in this process rely on their poll interval.
    pub fn new(db: PgDb) -> Self {
        let wake = Arc::new(Notify::new());
        let task = match tokio::runtime::Handle::try_current() {
            Ok(rt) => Some(rt.spawn(listen(db.pool().clone(), wake.clone()))),
            Err(_) => {
                tracing::warn!("no tokio runtime: postgres queue wake-ups are off");
                None
            }
        };
        Self {
            db,
            wake,
            _listener: Arc::new(Listener(task)),
        }
    }
}

/// Listens on [`CHANNEL`] and wakes `wake`'s waiters on every notification, for as long as the
/// queue lives. A lost connection is re-established with backoff; since notifications sent in
/// between are gone, every (re)start wakes all waiters once.
async fn listen(pool: PgPool, wake: Arc<Notify>) {
    let mut failures = 0_u32;
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    failures = 0;
                    wake.notify_waiters();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => wake.notify_waiters(),
                            // The connection was lost and re-established: catch up.
                            Ok(None) => wake.notify_waiters(),
                            Err(e) => {
                                tracing::warn!(error = %e, "postgres queue listener failed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "postgres queue LISTEN failed"),
            },
            Err(e) => tracing::warn!(error = %e, "postgres queue listener cannot connect"),
        }
        failures = failures.saturating_add(1);
        let pause = crate::store::postgres::backoff(failures).min(Duration::from_secs(5));
        tokio::time::sleep(pause).await;
    }
}

/// Upserts entries as pending, keyed by task, and announces them: the store, not the queue,
/// decides what is runnable. New entries get `seq`s in input order; a task listed twice keeps
/// the place of its first listing and the values of its last. Runs inside the caller's
/// transaction; the store calls it in `Direct` mode.
pub(crate) async fn upsert_entries(
    conn: &mut PgConnection,
    entries: &[QueueEntry],
) -> Result<(), PgError> {
    if entries.is_empty() {
        return Ok(());
    }
    // One listing per task: an upsert may not touch a row twice in one statement.
    let mut slot: HashMap<(&str, &str), usize> = HashMap::with_capacity(entries.len());
    let mut once: Vec<&QueueEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match slot.entry((e.job_id.as_str(), e.task_id.as_str())) {
            std::collections::hash_map::Entry::Occupied(s) => once[*s.get()] = e,
            std::collections::hash_map::Entry::Vacant(s) => {
                s.insert(once.len());
                once.push(e);
            }
        }
    }
    EntryArrays::of(once)
        .bind(sqlx::query(UPSERT))
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes the leased entries of `leases`: the queue's `ack`, and, inside the caller's
/// transaction, the store's acks that commit with a change (`Dispatch::Direct`).
pub(crate) async fn ack_entries(
    conn: &mut PgConnection,
    leases: &[LeaseId],
) -> Result<(), PgError> {
    sqlx::query(ACK)
        .bind(lease_strs(leases))
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves leased entries to the dead letters, numbered after every existing dead letter in
/// input order (one listing per lease).
async fn bury(
    conn: &mut PgConnection,
    leases: &[&str],
    reasons: &[&str],
    now: i64,
) -> Result<(), PgError> {
    let mut numbers: Vec<i64> = sqlx::query_scalar(DEAD_NUMBERS)
        .bind(i64::try_from(leases.len()).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
    numbers.sort_unstable();
    sqlx::query(BURY)
        .bind(leases)
        .bind(reasons)
        .bind(now)
        .bind(numbers)
        .execute(conn)
        .await?;
    Ok(())
}

fn lease_from_row(row: &PgRow) -> Result<Lease, PgError> {
    Ok(Lease {
        entry: entry_from_row(row)?,
        lease_id: row_id(row, "lease_id")?,
        worker_id: opt_id(row, "leased_by")?,
        expires_at: ts(row, "lease_expires_ms")?,
    })
}

/// Each item once, at its first listing: a later listing of an item that the first one
/// changed would find nothing, as it does when items act one by one.
fn first_listings<T, K: Eq + std::hash::Hash>(items: &[T], key: impl Fn(&T) -> K) -> Vec<&T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|i| seen.insert(key(i))).collect()
}

fn lease_strs(leases: &[LeaseId]) -> Vec<&str> {
    leases.iter().map(LeaseId::as_str).collect()
}

#[async_trait]
impl LeaseQueue for PostgresLeaseQueue {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn wake_source(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        on_conn!(self.db, "enqueue", |conn| {
            upsert_entries(conn, entries).await
        })
        .map_err(queue_err)
    }

    #[tracing::instrument(skip_all, fields(max))]
    async fn claim(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let backends: Vec<&str> = worker.backends.iter().map(String::as_str).collect();
        let models: Vec<&str> = worker.models.iter().map(String::as_str).collect();
        let worker_id = worker.worker_id.as_ref().map(|w| w.as_str());
        let expires_at = truncate_millis(now + lease_for);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut leases = on_conn!(self.db, "claim", |conn| {
            // A fresh prefix per attempt: a retried claim must not reuse lease ids.
            let prefix = format!("{}-", LeaseId::generate());
            let rows = sqlx::query(CLAIM)
                .bind(&prefix)
                .bind(worker_id)
                .bind(to_millis(expires_at))
                .bind(to_millis(now))
                .bind(worker.gpu)
                .bind(&backends)
                .bind(&models)
                .bind(limit)
                .fetch_all(conn)
                .await?;
            rows.iter()
                .map(|r| {
                    let order = (
                        r.try_get::<i16, _>("priority_rank")?,
                        r.try_get::<i64, _>("seq")?,
                    );
                    Ok((order, lease_from_row(r)?))
                })
                .collect::<Result<Vec<_>, PgError>>()
        })
        .map_err(queue_err)?;
        // RETURNING comes in no promised order; claim order is priority, then FIFO.
        leases.sort_by_key(|(order, _)| *order);
        Ok(leases.into_iter().map(|(_, l)| l).collect())
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids = lease_strs(leases);
        let held: HashSet<String> = on_conn!(self.db, "renew", |conn| {
            let rows = sqlx::query(RENEW)
                .bind(&ids)
                .bind(to_millis(until))
                .fetch_all(conn)
                .await?;
            rows.iter()
                .map(|r| Ok(r.try_get::<String, _>("lease_id")?))
                .collect::<Result<_, PgError>>()
        })
        .map_err(queue_err)?;
        // A renewal leaves the lease held, so a lease listed twice is reported twice.
        Ok(leases
            .iter()
            .filter(|l| held.contains(l.as_str()))
            .cloned()
            .collect())
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        on_conn!(self.db, "ack", |conn| { ack_entries(conn, leases).await }).map_err(queue_err)
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        let once = first_listings(leases, |(l, _)| l.clone());
        if once.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = once.iter().map(|(l, _)| l.as_str()).collect();
        let at: Vec<i64> = once.iter().map(|(_, t)| to_millis(*t)).collect();
        on_conn!(self.db, "nack", |conn| {
            sqlx::query(NACK).bind(&ids).bind(&at).execute(conn).await?;
            Ok(())
        })
        .map_err(queue_err)
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids = lease_strs(leases);
        on_conn!(self.db, "release", |conn| {
            sqlx::query(RELEASE).bind(&ids).execute(conn).await?;
            Ok(())
        })
        .map_err(queue_err)
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let once = first_listings(leases, |(l, _)| l.clone());
        if once.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = once.iter().map(|(l, _)| l.as_str()).collect();
        let reasons: Vec<&str> = once.iter().map(|(_, r)| r.as_str()).collect();
        in_tx!(self.db, "dead_letter", |conn| {
            bury(conn, &ids, &reasons, to_millis(now)).await
        })
        .map_err(queue_err)
    }

    #[tracing::instrument(skip_all)]
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let now = to_millis(now);
        in_tx!(self.db, "expire", |conn| {
            let rows = sqlx::query(EXPIRED).bind(now).fetch_all(&mut *conn).await?;
            let leases = rows
                .iter()
                .map(lease_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut requeue = Vec::new();
            let mut buried = Vec::new();
            let mut out = Vec::with_capacity(leases.len());
            // In deadline order, which is also the order the dead letters get.
            for lease in leases {
                let outcome = if lease.entry.attempt >= lease.entry.max_attempts {
                    buried.push(lease.lease_id.as_str().to_owned());
                    ExpiryOutcome::DeadLettered
                } else {
                    requeue.push(lease.lease_id.as_str().to_owned());
                    ExpiryOutcome::Requeued
                };
                out.push(Expired { lease, outcome });
            }
            if !requeue.is_empty() {
                sqlx::query(REQUEUE)
                    .bind(&requeue)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(NOTIFY).execute(&mut *conn).await?;
            }
            if !buried.is_empty() {
                let ids: Vec<&str> = buried.iter().map(String::as_str).collect();
                bury(conn, &ids, &vec!["lease expired"; ids.len()], now).await?;
            }
            Ok(out)
        })
        .map_err(queue_err)
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        if tasks.is_empty() {
            return Ok(());
        }
        let jobs: Vec<&str> = tasks.iter().map(|t| t.job_id.as_str()).collect();
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        on_conn!(self.db, "discard", |conn| {
            sqlx::query(DISCARD)
                .bind(&jobs)
                .bind(&ids)
                .execute(conn)
                .await?;
            Ok(())
        })
        .map_err(queue_err)
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_conn!(self.db, "list_dead", |conn| {
            let rows = sqlx::query(LIST_DEAD).bind(limit).fetch_all(conn).await?;
            rows.iter()
                .map(|r| {
                    Ok(DeadLetter {
                        entry: entry_from_row(r)?,
                        reason: r.try_get("dead_reason")?,
                        dead_at: ts(r, "dead_at_ms")?,
                    })
                })
                .collect()
        })
        .map_err(queue_err)
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        let once = first_listings(tasks, Clone::clone);
        if once.is_empty() {
            return Ok(Vec::new());
        }
        let jobs: Vec<&str> = once.iter().map(|t| t.job_id.as_str()).collect();
        let ids: Vec<&str> = once.iter().map(|t| t.task_id.as_str()).collect();
        let revived: HashSet<(String, String)> = in_tx!(self.db, "requeue_dead", |conn| {
            let rows = sqlx::query(REVIVE)
                .bind(&jobs)
                .bind(&ids)
                .bind(to_millis(now))
                .fetch_all(&mut *conn)
                .await?;
            if !rows.is_empty() {
                sqlx::query(NOTIFY).execute(conn).await?;
            }
            rows.iter()
                .map(|r| Ok((r.try_get("job_id")?, r.try_get("task_id")?)))
                .collect::<Result<_, PgError>>()
        })
        .map_err(queue_err)?;
        // A revived row is pending, so a task listed twice is revived (and counted) once.
        Ok(once
            .into_iter()
            .filter(|t| {
                revived.contains(&(t.job_id.as_str().to_owned(), t.task_id.as_str().to_owned()))
            })
            .cloned()
            .collect())
    }

    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let jobs: Vec<&str> = tasks.iter().map(|t| t.job_id.as_str()).collect();
        let ids: Vec<&str> = tasks.iter().map(|t| t.task_id.as_str()).collect();
        let held: HashSet<(String, String)> = on_conn!(self.db, "holds", |conn| {
            let rows = sqlx::query(HOLDS)
                .bind(&jobs)
                .bind(&ids)
                .fetch_all(conn)
                .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("job_id")?, r.try_get("task_id")?)))
                .collect::<Result<HashSet<_>, PgError>>()
        })
        .map_err(queue_err)?;
        Ok(tasks
            .iter()
            .map(|t| held.contains(&(t.job_id.to_string(), t.task_id.to_string())))
            .collect())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let rows = on_conn!(self.db, "depth", |conn| {
            let rows = sqlx::query(DEPTH).fetch_all(conn).await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<String, _>("state")?,
                        r.try_get::<i16, _>("priority_rank")?,
                        r.try_get::<i64, _>("n")?,
                    ))
                })
                .collect::<Result<Vec<_>, PgError>>()
        })
        .map_err(queue_err)?;
        let mut depth = QueueDepth::default();
        for (state, rank, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "pending" => depth.add_pending(Priority::from_rank(i64::from(rank)), n),
                "leased" => depth.leased += n,
                "dead" => depth.dead += n,
                other => return Err(QueueError::Corrupt(format!("queue entry state `{other}`"))),
            }
        }
        Ok(depth)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.db.ping().await.map_err(queue_err)
    }
}
