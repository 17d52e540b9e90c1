//! SQLite lease queue: the `queue_entries` table of a [`SqliteDb`], shared with the store.
//!
//! One row per task; `seq` is its FIFO position and survives re-enqueue, `state` is
//! `pending`, `leased` or `dead`. A batch operation on leases or tasks is one write
//! transaction that runs a cached prepared statement once per item, in input order.
//!
//! Each state's rows sit in a partial index of their own (`queue_pending`, `queue_leased`,
//! `queue_dead`), so a transition moves a row between two small indexes. A lease is found by
//! the `seq` its id ends with ([`lease_seq`]), a rowid seek, then matched on the whole id: no
//! index of lease ids to write at every claim and ack.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Row;

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::clock::to_millis;
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, Priority, QueueEntry, TaskRef, Timestamp,
    WorkerCaps,
};
use crate::store::sqlite::{
    ENTRY_COLUMNS, SqliteDb, entry_at, entry_columns, entry_from_row, opt_id, row_id, ts,
};

pub(crate) use self::claim::Claim;
pub(crate) use self::enqueue::upsert_entries;

mod claim;
mod enqueue;
#[cfg(test)]
mod tests;

// Every statement on a lease takes its id as `?1` and the `seq` it names ([`lease_seq`]) as
// its last parameter.

/// Extends a held lease (`?1`, `?3`) to `?2`.
const RENEW: &str = "UPDATE queue_entries SET lease_expires_ms = ?2
    WHERE seq = ?3 AND lease_id = ?1 AND state = 'leased'";

/// Removes a leased entry (`?1` its lease id, `?2`).
const ACK: &str = "DELETE FROM queue_entries WHERE seq = ?2 AND lease_id = ?1 AND state = 'leased'";

/// Returns a leased entry (`?1`, `?3`) to pending from `?2`. The attempt count stays: the
/// delivery happened.
const NACK: &str = "UPDATE queue_entries SET state = 'pending', not_before_ms = ?2,
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE seq = ?3 AND lease_id = ?1 AND state = 'leased'";

/// Returns a leased entry (`?1`, `?2`) to pending, taking back the attempt its claim counted.
const RELEASE: &str = "UPDATE queue_entries SET state = 'pending', attempt = MAX(attempt - 1, 0),
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE seq = ?2 AND lease_id = ?1 AND state = 'leased'";

/// Moves a leased entry (`?1`, `?4`) to the dead letters, for reason `?2` at `?3`, after every
/// existing dead letter (`queue_dead` holds the newest `dead_seq` at its end).
const BURY: &str = "UPDATE queue_entries SET state = 'dead', dead_reason = ?2,
        dead_at_ms = ?3,
        dead_seq = (SELECT COALESCE(MAX(dead_seq), 0) + 1 FROM queue_entries
                    WHERE state = 'dead'),
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE seq = ?4 AND lease_id = ?1 AND state = 'leased'";

/// Returns an expired lease (`?1`, `?2`) to pending.
const REQUEUE: &str = "UPDATE queue_entries SET state = 'pending',
        lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
    WHERE seq = ?2 AND lease_id = ?1 AND state = 'leased'";

/// Drops a task's entry (`?1` job, `?2` task) in any state.
const DISCARD: &str = "DELETE FROM queue_entries WHERE job_id = ?1 AND task_id = ?2";

/// Revives a task's dead letter (`?1` job, `?2` task) as pending from `?3`. `+state`: the
/// unary plus keeps SQLite seeking the task's key once instead of walking `queue_dead`.
const REVIVE: &str = "UPDATE queue_entries SET state = 'pending', attempt = 0,
        not_before_ms = ?3, dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL
    WHERE job_id = ?1 AND task_id = ?2 AND +state = 'dead'";

/// Leases that ran out by `?1`, in deadline order.
const EXPIRED: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", lease_id, leased_by, lease_expires_ms FROM queue_entries
     WHERE state = 'leased' AND lease_expires_ms <= ?1
     ORDER BY lease_expires_ms, lease_id"
);

/// The oldest `?1` dead letters.
const LIST_DEAD: &str = concat!(
    "SELECT ",
    entry_columns!(),
    ", dead_reason, dead_at_ms FROM queue_entries WHERE state = 'dead'
     ORDER BY dead_seq LIMIT (SELECT ?1)"
);

/// Whether a task (`?1` job, `?2` task) has an entry.
const HOLDS: &str =
    "SELECT EXISTS (SELECT 1 FROM queue_entries WHERE job_id = ?1 AND task_id = ?2)";

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

    /// Runs `sql` once per item, with the parameters `params` makes of it, in one write
    /// transaction; returns how many rows each execution changed. Items act in input order,
    /// so an item listed again after a change that no longer matches it finds nothing.
    async fn per_item<'a, T, P: rusqlite::Params>(
        &self,
        sql: &'static str,
        items: &'a [T],
        params: impl Fn(&'a T) -> P,
    ) -> Result<Vec<usize>, QueueError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let changed = self
            .db
            .write(|tx| {
                let mut st = tx.prepare_cached(sql)?;
                items
                    .iter()
                    .map(|i| st.execute(params(i)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        Ok(changed)
    }
}

/// Removes the leased entries of `leases`, inside the caller's transaction: the queue's
/// `ack`, and the store's acks that commit with a change (`Dispatch::Direct`).
pub(crate) fn ack_entries(conn: &rusqlite::Connection, leases: &[LeaseId]) -> rusqlite::Result<()> {
    let mut ack = conn.prepare_cached(ACK)?;
    for l in leases {
        ack.execute((l.as_str(), lease_seq(l)))?;
    }
    Ok(())
}

/// The `seq` of the entry a lease id names: the claim ends every id with the entry's `seq`,
/// zero-padded, after its last `-` (`claim::CLAIM`). An id this queue did not make names no
/// entry (-1: `seq`s start at 1).
fn lease_seq(lease: &LeaseId) -> i64 {
    lease
        .as_str()
        .rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or(-1)
}

fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    lease_at(row, row.as_ref().column_index("job_id")?)
}

/// Reads a lease from a row holding [`entry_columns!`] from position `at`, then `lease_id`,
/// `leased_by` and `lease_expires_ms`; by position, like [`entry_at`].
fn lease_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Lease> {
    let lease = at + ENTRY_COLUMNS;
    debug_assert_eq!(row.as_ref().column_name(lease).ok(), Some("lease_id"));
    debug_assert_eq!(
        row.as_ref().column_name(lease + 2).ok(),
        Some("lease_expires_ms")
    );
    Ok(Lease {
        entry: entry_at(row, at)?,
        lease_id: row_id(row, lease)?,
        worker_id: opt_id(row, lease + 1)?,
        expires_at: ts(row, lease + 2)?,
    })
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
        self.db
            .write(|tx| upsert_entries(tx, entries))
            .await
            .map_err(QueueError::from)
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
        Ok(claim::claim(&self.db, worker, max, lease_for, now).await?)
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        let until = to_millis(until);
        let changed = self
            .per_item(RENEW, leases, |l| (l.as_str(), until, lease_seq(l)))
            .await?;
        // A renewal leaves the lease held, so a lease listed twice is reported twice.
        Ok(leases
            .iter()
            .zip(changed)
            .filter(|(_, n)| *n > 0)
            .map(|(l, _)| l.clone())
            .collect())
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        self.db.write(|tx| ack_entries(tx, leases)).await?;
        Ok(())
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        self.per_item(NACK, leases, |(l, at)| {
            (l.as_str(), to_millis(*at), lease_seq(l))
        })
        .await?;
        Ok(())
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        self.per_item(RELEASE, leases, |l| (l.as_str(), lease_seq(l)))
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let now = to_millis(now);
        self.per_item(BURY, leases, |(l, reason)| {
            (l.as_str(), reason.as_str(), now, lease_seq(l))
        })
        .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let now = to_millis(now);
        let expired = self
            .db
            .write(|tx| {
                let leases = tx
                    .prepare_cached(EXPIRED)?
                    .query_map([now], lease_from_row)?
                    .collect::<rusqlite::Result<Vec<Lease>>>()?;
                let mut requeue = tx.prepare_cached(REQUEUE)?;
                let mut bury = tx.prepare_cached(BURY)?;
                let mut out = Vec::with_capacity(leases.len());
                // In deadline order, which is also the order the dead letters get.
                for lease in leases {
                    let (id, seq) = (lease.lease_id.as_str(), lease_seq(&lease.lease_id));
                    let outcome = if lease.entry.attempt >= lease.entry.max_attempts {
                        bury.execute((id, "lease expired", now, seq))?;
                        ExpiryOutcome::DeadLettered
                    } else {
                        requeue.execute((id, seq))?;
                        ExpiryOutcome::Requeued
                    };
                    out.push(Expired { lease, outcome });
                }
                Ok::<_, rusqlite::Error>(out)
            })
            .await?;
        Ok(expired)
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        self.per_item(DISCARD, tasks, |t| (t.job_id.as_str(), t.task_id.as_str()))
            .await?;
        Ok(())
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let dead_letter = |r: &Row<'_>| -> rusqlite::Result<DeadLetter> {
            Ok(DeadLetter {
                entry: entry_from_row(r)?,
                reason: r.get("dead_reason")?,
                dead_at: ts(r, "dead_at_ms")?,
            })
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self.db.read(|tx| {
            tx.prepare_cached(LIST_DEAD)?
                .query_map([limit], dead_letter)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?)
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        let now = to_millis(now);
        let changed = self
            .per_item(REVIVE, tasks, |t| {
                (t.job_id.as_str(), t.task_id.as_str(), now)
            })
            .await?;
        // A revived row is pending, so a task listed twice is revived (and counted) once.
        Ok(tasks
            .iter()
            .zip(changed)
            .filter(|(_, n)| *n > 0)
            .map(|(t, _)| t.clone())
            .collect())
    }

    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        Ok(self.db.read(|tx| {
            let mut st = tx.prepare_cached(HOLDS)?;
            tasks
                .iter()
                .map(|t| st.query_row((t.job_id.as_str(), t.task_id.as_str()), |r| r.get(0)))
                .collect::<rusqlite::Result<Vec<bool>>>()
        })?)
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let rows = self.db.read(|tx| {
            tx.prepare_cached(DEPTH)?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>("state")?,
                        r.get::<_, i64>("priority_rank")?,
                        r.get::<_, i64>("n")?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut depth = QueueDepth::default();
        for (state, rank, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "pending" => depth.add_pending(Priority::from_rank(rank), n),
                "leased" => depth.leased += n,
                "dead" => depth.dead += n,
                other => return Err(QueueError::Corrupt(format!("queue entry state `{other}`"))),
            }
        }
        Ok(depth)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(self.db.ping().await?)
    }
}
