//! SQLite lease queue: the `queue_entries` table of a [`SqliteDb`], shared with the store.
//!
//! One row per task; `seq` is its FIFO position and survives re-enqueue, `state` is
//! `pending`, `leased` or `dead`. Every batch operation on leases or tasks is one set-based
//! statement over their ids bound as a JSON array (`json_each(?)`), so its cost is one round
//! trip to the driver's thread rather than one per item; a lone statement is also its own write
//! transaction. Enqueueing binds whole entries in multi-row statements (`enqueue.rs`).
//!
//! Each state's rows sit in a partial index of their own (`queue_pending`, `queue_leased`,
//! `queue_dead`), so a transition moves a row between two small indexes. Statements that look
//! rows up by lease id write the state test as `+state`: the unary plus keeps SQLite from
//! walking the `queue_leased` index (every leased row) instead of seeking `queue_lease` once
//! per item.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::clock::to_millis;
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, Priority, QueueEntry, TaskRef, Timestamp,
    WorkerCaps,
};
use crate::store::sqlite::{
    SqliteDb, entry_columns, entry_from_row, opt_id, queue_err, row_id, to_json, ts,
};

pub(crate) use self::enqueue::upsert_entries;

mod claim;
mod enqueue;
#[cfg(test)]
mod tests;

/// Extends held leases (`?1` a JSON array of lease ids) to `?2`; returns the ones it found.
const RENEW: &str = "UPDATE queue_entries SET lease_expires_ms = ?2
    WHERE +state = 'leased' AND lease_id IN (SELECT value FROM json_each(?1))
    RETURNING lease_id";

/// Removes leased entries (`?1` a JSON array of lease ids).
const ACK: &str = "DELETE FROM queue_entries
    WHERE +state = 'leased' AND lease_id IN (SELECT value FROM json_each(?1))";

/// Returns leased entries to pending; `?1` is a JSON array of `[lease id, not before ms]`.
/// The attempt count stays: the delivery happened.
const NACK: &str = "UPDATE queue_entries SET state = 'pending', not_before_ms = n.at,
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    FROM (SELECT value->>0 AS id, value->>1 AS at FROM json_each(?1)) AS n
    WHERE queue_entries.lease_id = n.id AND +queue_entries.state = 'leased'";

/// Returns leased entries (`?1` a JSON array of lease ids) to pending, taking back the
/// attempt their claim counted.
const RELEASE: &str = "UPDATE queue_entries SET state = 'pending', attempt = MAX(attempt - 1, 0),
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE +state = 'leased' AND lease_id IN (SELECT value FROM json_each(?1))";

/// Moves leased entries to the dead letters at `?2`; `?1` is a JSON array of
/// `[lease id, reason]`. They go after every existing dead letter, in array order: `dead_seq`
/// is the newest one's plus the array index plus one. The maximum is taken once, in `b`,
/// before any row changes, so it does not creep up as rows are buried.
const BURY: &str = "UPDATE queue_entries SET state = 'dead', dead_reason = n.reason,
        dead_at_ms = ?2, dead_seq = b.last + n.k + 1,
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    FROM (SELECT key AS k, value->>0 AS id, value->>1 AS reason FROM json_each(?1)) AS n,
         (SELECT COALESCE(MAX(dead_seq), 0) AS last FROM queue_entries
          WHERE state = 'dead') AS b
    WHERE queue_entries.lease_id = n.id AND +queue_entries.state = 'leased'";

/// Returns expired leases (`?1` a JSON array of lease ids) to pending.
const REQUEUE: &str = "UPDATE queue_entries SET state = 'pending',
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE +state = 'leased' AND lease_id IN (SELECT value FROM json_each(?1))";

/// Drops entries in any state; `?1` is a JSON array of `[job id, task id]`.
const DISCARD: &str = "DELETE FROM queue_entries
    WHERE (job_id, task_id) IN (SELECT value->>0, value->>1 FROM json_each(?1))";

/// Revives dead letters (`?1` a JSON array of `[job id, task id]`) as pending from `?2`.
const REVIVE: &str = "UPDATE queue_entries SET state = 'pending', attempt = 0,
        not_before_ms = ?2, dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL
    WHERE +state = 'dead'
      AND (job_id, task_id) IN (SELECT value->>0, value->>1 FROM json_each(?1))
    RETURNING job_id, task_id";

/// Entries per state (and class, for pending ones). Each part counts one state's partial
/// index without touching the table.
const DEPTH: &str = "SELECT 'pending' AS state, priority_rank, COUNT(*) AS n FROM queue_entries
        WHERE state = 'pending' GROUP BY priority_rank
    UNION ALL SELECT 'leased', 0, COUNT(*) FROM queue_entries WHERE state = 'leased'
    UNION ALL SELECT 'dead', 0, COUNT(*) FROM queue_entries WHERE state = 'dead'";

/// A [`LeaseQueue`] in the `queue_entries` table of a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteLeaseQueue {
    db: SqliteDb,
}

impl SqliteLeaseQueue {
    /// A queue on `db`; give the store the same `db` with `Dispatch::Direct` so that ready
    /// entries are enqueued in the store's own transactions.
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }

    /// Runs `sql` with the batch `items` as `?1` (a JSON array) and `extra` as `?2`, on the
    /// writer connection: alone, the statement is its own write transaction.
    async fn run_batch<T: Serialize + Sync>(
        &self,
        sql: &'static str,
        items: &[T],
        extra: Option<i64>,
    ) -> Result<(), QueueError> {
        if items.is_empty() {
            return Ok(());
        }
        let q = sqlx::query(sql).bind(to_json(&items).map_err(queue_err)?);
        let q = match extra {
            Some(v) => q.bind(v),
            None => q,
        };
        q.execute(self.db.writer()).await.map_err(queue_err)?;
        Ok(())
    }
}

fn lease_from_row(row: &SqliteRow) -> Result<Lease, sqlx::Error> {
    Ok(Lease {
        entry: entry_from_row(row)?,
        lease_id: row_id(row, "lease_id")?,
        worker_id: opt_id(row, "leased_by")?,
        expires_at: ts(row, "lease_expires_ms")?,
    })
}

/// The first listing of each key, in input order. Statements that change a row so that a
/// second listing would no longer match (nack, bury, revive) must see each key once: with
/// duplicates an `UPDATE ... FROM` would pick an arbitrary one, where the per-item loop this
/// replaces acted on the first.
fn first_of_each<'a, T, K: Eq + std::hash::Hash>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut seen = HashSet::new();
    items.iter().filter(|i| seen.insert(key(i))).collect()
}

fn task_pair(t: &TaskRef) -> (&str, &str) {
    (t.job_id.as_str(), t.task_id.as_str())
}

#[async_trait]
impl LeaseQueue for SqliteLeaseQueue {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.db.writer().acquire().await.map_err(queue_err)?;
        upsert_entries(&mut conn, entries).await.map_err(queue_err)
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
        claim::claim(
            self.db.reader(),
            self.db.writer(),
            worker,
            max,
            lease_for,
            now,
        )
        .await
        .map_err(queue_err)
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = leases.iter().map(LeaseId::as_str).collect();
        let rows = sqlx::query(RENEW)
            .bind(to_json(&ids).map_err(queue_err)?)
            .bind(to_millis(until))
            .fetch_all(self.db.writer())
            .await
            .map_err(queue_err)?;
        let held = rows
            .iter()
            .map(|r| r.try_get::<String, _>("lease_id"))
            .collect::<Result<HashSet<_>, _>>()
            .map_err(queue_err)?;
        // A renewal leaves the lease held, so a lease listed twice is reported twice.
        Ok(leases
            .iter()
            .filter(|l| held.contains(l.as_str()))
            .cloned()
            .collect())
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let ids: Vec<&str> = leases.iter().map(LeaseId::as_str).collect();
        self.run_batch(ACK, &ids, None).await
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        let rows: Vec<_> = first_of_each(leases, |(id, _)| id)
            .into_iter()
            .map(|(id, at)| (id.as_str(), to_millis(*at)))
            .collect();
        self.run_batch(NACK, &rows, None).await
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let ids: Vec<&str> = leases.iter().map(LeaseId::as_str).collect();
        self.run_batch(RELEASE, &ids, None).await
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let rows: Vec<_> = first_of_each(leases, |(id, _)| id)
            .into_iter()
            .map(|(id, reason)| (id.as_str(), reason.as_str()))
            .collect();
        self.run_batch(BURY, &rows, Some(to_millis(now))).await
    }

    #[tracing::instrument(skip_all)]
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let now_ms = to_millis(now);
        let mut tx = self.db.begin_write().await.map_err(queue_err)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            ", lease_id, leased_by, lease_expires_ms FROM queue_entries
             WHERE state = 'leased' AND lease_expires_ms <= ?1
             ORDER BY lease_expires_ms, lease_id"
        ))
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(queue_err)?;
        let mut out = Vec::with_capacity(rows.len());
        let (mut requeue, mut bury) = (Vec::new(), Vec::new());
        for row in &rows {
            let lease = lease_from_row(row).map_err(queue_err)?;
            let outcome = if lease.entry.attempt >= lease.entry.max_attempts {
                // In deadline order, which `BURY` turns into dead-letter order.
                bury.push((lease.lease_id.clone(), "lease expired"));
                ExpiryOutcome::DeadLettered
            } else {
                requeue.push(lease.lease_id.clone());
                ExpiryOutcome::Requeued
            };
            out.push(Expired { lease, outcome });
        }
        if !requeue.is_empty() {
            sqlx::query(REQUEUE)
                .bind(to_json(&requeue).map_err(queue_err)?)
                .execute(&mut *tx)
                .await
                .map_err(queue_err)?;
        }
        if !bury.is_empty() {
            sqlx::query(BURY)
                .bind(to_json(&bury).map_err(queue_err)?)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(queue_err)?;
        }
        tx.commit().await.map_err(queue_err)?;
        Ok(out)
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        let rows: Vec<_> = tasks.iter().map(task_pair).collect();
        self.run_batch(DISCARD, &rows, None).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            entry_columns!(),
            ", dead_reason, dead_at_ms FROM queue_entries WHERE state = 'dead'
             ORDER BY dead_seq LIMIT ?1"
        ))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.reader())
        .await
        .map_err(queue_err)?;
        let dead_letter = |r: &SqliteRow| -> Result<DeadLetter, sqlx::Error> {
            let reason = r.try_get("dead_reason")?;
            Ok(DeadLetter {
                entry: entry_from_row(r)?,
                reason,
                dead_at: ts(r, "dead_at_ms")?,
            })
        };
        rows.iter()
            .map(dead_letter)
            .collect::<Result<_, _>>()
            .map_err(queue_err)
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        let firsts = first_of_each(tasks, task_pair);
        if firsts.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<_> = firsts.iter().map(|t| task_pair(t)).collect();
        let rows = sqlx::query(REVIVE)
            .bind(to_json(&pairs).map_err(queue_err)?)
            .bind(to_millis(now))
            .fetch_all(self.db.writer())
            .await
            .map_err(queue_err)?;
        let revived = rows
            .iter()
            .map(|r| Ok((r.try_get("job_id")?, r.try_get("task_id")?)))
            .collect::<Result<HashSet<(String, String)>, sqlx::Error>>()
            .map_err(queue_err)?;
        // Revived rows are pending, so a task listed twice counts once, in input order.
        Ok(firsts
            .into_iter()
            .filter(|t| revived.contains(&(t.job_id.to_string(), t.task_id.to_string())))
            .cloned()
            .collect())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let rows = sqlx::query(DEPTH)
            .fetch_all(self.db.reader())
            .await
            .map_err(queue_err)?;
        let mut depth = QueueDepth::default();
        for row in &rows {
            let state: &str = row.try_get("state").map_err(queue_err)?;
            let rank: i64 = row.try_get("priority_rank").map_err(queue_err)?;
            let n: u64 = row.try_get("n").map_err(queue_err)?;
            match state {
                "pending" => depth.add_pending(Priority::from_rank(rank), n),
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
