//! SQLite lease queue: the `queue_entries` table of a [`SqliteDb`], shared with the store.
//!
//! One row per task; `seq` is its FIFO position and survives re-enqueue, `state` is
//! `pending`, `leased` or `dead`. Every batch operation is one write transaction.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::clock::{to_millis, truncate_millis};
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, Priority, QueueEntry, TaskRef, Timestamp,
    WorkerCaps,
};
use crate::store::sqlite::{
    SqliteDb, SqliteQuery, bind_entry, entry_columns, entry_from_row, opt_id, queue_err, row_id, ts,
};

/// Upserts entries as pending, keyed by task. An existing row keeps its `seq` (its FIFO
/// position) and loses any lease or dead-letter state: the store, not the queue, decides what
/// is runnable. Runs inside the caller's transaction; the store calls it in `Direct` mode.
pub(crate) async fn upsert_entries(
    conn: &mut SqliteConnection,
    entries: &[QueueEntry],
) -> Result<(), sqlx::Error> {
    for e in entries {
        let q = sqlx::query(concat!(
            "INSERT INTO queue_entries (",
            entry_columns!(),
            ", state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')
             ON CONFLICT (job_id, task_id) DO UPDATE SET
                 tenant = excluded.tenant, priority_rank = excluded.priority_rank,
                 requires_gpu = excluded.requires_gpu, backend = excluded.backend,
                 model = excluded.model, target_worker = excluded.target_worker,
                 attempt = excluded.attempt, max_attempts = excluded.max_attempts,
                 not_before_ms = excluded.not_before_ms, state = 'pending',
                 lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL,
                 dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL"
        ));
        bind_entry(q, e).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Claim candidates of one priority class in FIFO order after a `seq`: equality on `state`
/// and `priority_rank` plus a range on `seq` is an exact seek into the `queue_claim` index,
/// so each window starts where the last one stopped.
const CLAIM_WINDOW: &str = concat!(
    "SELECT seq, ",
    entry_columns!(),
    " FROM queue_entries
     WHERE state = 'pending' AND priority_rank = ?1 AND seq > ?2 AND not_before_ms <= ?3
     ORDER BY seq LIMIT ?4"
);

/// Priority ranks in claim order.
const RANKS: [Priority; 3] = [Priority::Interactive, Priority::Standard, Priority::Batch];

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

    /// Runs `sql` once per item, bound by `bind`, all in one write transaction. Returns, per
    /// item, whether it changed a row.
    async fn for_each<T: Sync>(
        &self,
        items: &[T],
        sql: &'static str,
        bind: impl Fn(SqliteQuery<'static>, &T) -> SqliteQuery<'static> + Send + Sync,
    ) -> Result<Vec<bool>, QueueError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write().await.map_err(queue_err)?;
        let mut changed = Vec::with_capacity(items.len());
        for item in items {
            let done = bind(sqlx::query(sql), item)
                .execute(&mut *tx)
                .await
                .map_err(queue_err)?;
            changed.push(done.rows_affected() > 0);
        }
        tx.commit().await.map_err(queue_err)?;
        Ok(changed)
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

/// Picks up to `max` claimable entries in claim order, checking each against the worker in
/// Rust (`Requirements::admit` is the one definition of a match). Reads windows of the claim
/// index rather than the whole pending set, so the cost follows what is skipped, not the
/// queue length.
async fn pick(
    conn: &mut SqliteConnection,
    worker: &WorkerCaps,
    max: usize,
    now_ms: i64,
) -> Result<Vec<(i64, QueueEntry)>, sqlx::Error> {
    let window = max.saturating_mul(4).saturating_add(16);
    let limit = i64::try_from(window).unwrap_or(i64::MAX);
    let mut picked = Vec::with_capacity(max);
    for priority in RANKS {
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(CLAIM_WINDOW)
                .bind(priority.rank())
                .bind(after)
                .bind(now_ms)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
            for row in &rows {
                after = row.try_get("seq")?;
                let entry = entry_from_row(row)?;
                if entry.requirements.admit(worker) {
                    picked.push((after, entry));
                    if picked.len() == max {
                        return Ok(picked);
                    }
                }
            }
            if rows.len() < window {
                break;
            }
        }
    }
    Ok(picked)
}

/// Moves a leased row to the dead letters, after every existing dead letter.
macro_rules! bury {
    ($where:literal) => {
        concat!(
            "UPDATE queue_entries SET state = 'dead', dead_reason = ?2, dead_at_ms = ?3,
                 dead_seq = (SELECT COALESCE(MAX(dead_seq), 0) + 1 FROM queue_entries
                             WHERE state = 'dead'),
                 lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
             WHERE ",
            $where
        )
    };
}

/// The items whose statement changed a row.
fn changed<T: Clone>(items: &[T], changed: Vec<bool>) -> Vec<T> {
    items
        .iter()
        .zip(changed)
        .filter(|(_, c)| *c)
        .map(|(i, _)| i.clone())
        .collect()
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
        let mut tx = self.db.begin_write().await.map_err(queue_err)?;
        upsert_entries(&mut tx, entries).await.map_err(queue_err)?;
        tx.commit().await.map_err(queue_err)
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
        let expires_at = truncate_millis(now + lease_for);
        let mut tx = self.db.begin_write().await.map_err(queue_err)?;
        let picked = pick(&mut tx, worker, max, to_millis(now))
            .await
            .map_err(queue_err)?;
        let mut leases = Vec::with_capacity(picked.len());
        for (seq, mut entry) in picked {
            let lease_id = LeaseId::generate();
            sqlx::query(
                "UPDATE queue_entries SET state = 'leased', attempt = attempt + 1,
                     lease_id = ?2, leased_by = ?3, lease_expires_ms = ?4
                 WHERE seq = ?1",
            )
            .bind(seq)
            .bind(lease_id.as_str())
            .bind(worker.worker_id.as_ref().map(|w| w.as_str()))
            .bind(to_millis(expires_at))
            .execute(&mut *tx)
            .await
            .map_err(queue_err)?;
            entry.attempt += 1;
            let worker_id = worker.worker_id.clone();
            leases.push(Lease {
                entry,
                lease_id,
                worker_id,
                expires_at,
            });
        }
        tx.commit().await.map_err(queue_err)?;
        Ok(leases)
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        let sql = "UPDATE queue_entries SET lease_expires_ms = ?2
                   WHERE lease_id = ?1 AND state = 'leased'";
        let until = to_millis(until);
        let hit = self
            .for_each(leases, sql, |q, id| q.bind(id.as_str()).bind(until))
            .await?;
        Ok(changed(leases, hit))
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let sql = "DELETE FROM queue_entries WHERE lease_id = ?1 AND state = 'leased'";
        self.for_each(leases, sql, |q, id| q.bind(id.as_str()))
            .await?;
        Ok(())
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        // The attempt count stays: the delivery happened.
        let sql = "UPDATE queue_entries SET state = 'pending', not_before_ms = ?2,
                       lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
                   WHERE lease_id = ?1 AND state = 'leased'";
        let bind = |q: SqliteQuery<'static>, (id, at): &(LeaseId, Timestamp)| {
            q.bind(id.as_str()).bind(to_millis(*at))
        };
        self.for_each(leases, sql, bind).await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let sql = bury!("lease_id = ?1 AND state = 'leased'");
        let now = to_millis(now);
        let bind = |q: SqliteQuery<'static>, (id, reason): &(LeaseId, String)| {
            q.bind(id.as_str()).bind(reason.clone()).bind(now)
        };
        self.for_each(leases, sql, bind).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let now_ms = to_millis(now);
        let mut tx = self.db.begin_write().await.map_err(queue_err)?;
        let rows = sqlx::query(concat!(
            "SELECT seq, ",
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
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(queue_err)?;
            let lease = lease_from_row(row).map_err(queue_err)?;
            let (q, outcome) = if lease.entry.attempt >= lease.entry.max_attempts {
                let q = sqlx::query(bury!("seq = ?1"))
                    .bind(seq)
                    .bind("lease expired")
                    .bind(now_ms);
                (q, ExpiryOutcome::DeadLettered)
            } else {
                let q = sqlx::query(
                    "UPDATE queue_entries SET state = 'pending',
                         lease_id = NULL, leased_by = NULL, lease_expires_ms = NULL
                     WHERE seq = ?1",
                );
                (q.bind(seq), ExpiryOutcome::Requeued)
            };
            q.execute(&mut *tx).await.map_err(queue_err)?;
            out.push(Expired { lease, outcome });
        }
        tx.commit().await.map_err(queue_err)?;
        Ok(out)
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        let sql = "DELETE FROM queue_entries WHERE job_id = ?1 AND task_id = ?2";
        let bind = |q: SqliteQuery<'static>, t: &TaskRef| {
            q.bind(t.job_id.as_str()).bind(t.task_id.as_str())
        };
        self.for_each(tasks, sql, bind).await?;
        Ok(())
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
        let sql = "UPDATE queue_entries SET state = 'pending', attempt = 0, not_before_ms = ?3,
                       dead_reason = NULL, dead_at_ms = NULL, dead_seq = NULL
                   WHERE job_id = ?1 AND task_id = ?2 AND state = 'dead'";
        let now = to_millis(now);
        let bind = |q: SqliteQuery<'static>, t: &TaskRef| {
            q.bind(t.job_id.as_str()).bind(t.task_id.as_str()).bind(now)
        };
        let hit = self.for_each(tasks, sql, bind).await?;
        Ok(changed(tasks, hit))
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        // Answered from the `queue_claim` index alone.
        let rows = sqlx::query(
            "SELECT state, priority_rank, COUNT(*) AS n FROM queue_entries
             GROUP BY state, priority_rank",
        )
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tempfile::TempDir;

    use super::*;
    use crate::clock::from_millis;
    use crate::domain::{JobId, Requirements, TaskId, TenantId, WorkerId};
    use crate::queue::memory::MemoryLeaseQueue;

    const LEASE: Duration = Duration::from_secs(10);

    fn at(ms: i64) -> Timestamp {
        from_millis(1_767_225_600_000 + ms)
    }

    fn an_entry(task: &str, priority: Priority) -> QueueEntry {
        QueueEntry {
            job_id: JobId::parse("job-1").unwrap(),
            task_id: TaskId::parse(task).unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            priority,
            requirements: Requirements::default(),
            attempt: 0,
            max_attempts: 2,
            not_before: at(0),
        }
    }

    fn gpu_entry(task: &str) -> QueueEntry {
        QueueEntry {
            requirements: Requirements {
                gpu: true,
                ..Default::default()
            },
            ..an_entry(task, Priority::Standard)
        }
    }

    fn cpu() -> WorkerCaps {
        WorkerCaps {
            worker_id: Some(WorkerId::parse("w-cpu").unwrap()),
            ..Default::default()
        }
    }

    fn names(leases: &[Lease]) -> Vec<String> {
        leases.iter().map(|l| l.entry.task_id.to_string()).collect()
    }

    async fn a_queue() -> (TempDir, SqliteLeaseQueue) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("q.db")).await.unwrap();
        (dir, SqliteLeaseQueue::new(db))
    }

    /// Claims take higher priority classes first and FIFO within a class; re-enqueue keeps the
    /// original position.
    #[tokio::test]
    async fn claim_orders_by_priority_then_fifo() {
        let (_dir, q) = a_queue().await;
        q.enqueue(&[
            an_entry("b1", Priority::Batch),
            an_entry("s1", Priority::Standard),
            an_entry("i1", Priority::Interactive),
            an_entry("s2", Priority::Standard),
        ])
        .await
        .unwrap();
        q.enqueue(&[an_entry("s1", Priority::Standard)])
            .await
            .unwrap();
        let leases = q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap();
        assert_eq!(names(&leases), ["i1", "s1", "s2", "b1"]);
        assert!(
            leases
                .iter()
                .all(|l| l.entry.attempt == 1 && l.expires_at == at(10_000))
        );
        assert_eq!(leases[0].worker_id, cpu().worker_id);
        let ids: BTreeSet<_> = leases.iter().map(|l| l.lease_id.clone()).collect();
        assert_eq!(ids.len(), 4, "each claim gets its own lease id");
        assert!(
            q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap().is_empty(),
            "leased entries are not claimable"
        );
    }

    /// Entries in backoff are skipped until `not_before`.
    #[tokio::test]
    async fn claim_skips_entries_before_not_before() {
        let (_dir, q) = a_queue().await;
        let later = QueueEntry {
            not_before: at(5_000),
            ..an_entry("later", Priority::Interactive)
        };
        q.enqueue(&[later, an_entry("now", Priority::Batch)])
            .await
            .unwrap();
        assert_eq!(
            names(&q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap()),
            ["now"]
        );
        assert_eq!(
            names(&q.claim(&cpu(), 10, LEASE, at(5_000)).await.unwrap()),
            ["later"]
        );
    }

    /// Requirements are hard: gpu, backend, model and target worker must all admit the worker,
    /// even when many unclaimable entries sit ahead of a claimable one (several index windows).
    #[tokio::test]
    async fn claim_honours_requirements_across_windows() {
        let (_dir, q) = a_queue().await;
        let mut entries: Vec<_> = (0..100)
            .map(|i| gpu_entry(&format!("gpu-{i:03}")))
            .collect();
        let vllm = Requirements {
            backend: Some("vllm".into()),
            model: Some("m".into()),
            ..Default::default()
        };
        entries.push(QueueEntry {
            requirements: vllm,
            ..an_entry("vllm", Priority::Standard)
        });
        let pinned = Requirements {
            worker_id: Some(WorkerId::parse("w-other").unwrap()),
            ..Default::default()
        };
        entries.push(QueueEntry {
            requirements: pinned,
            ..an_entry("pinned", Priority::Standard)
        });
        entries.push(an_entry("plain", Priority::Standard));
        q.enqueue(&entries).await.unwrap();

        assert_eq!(
            names(&q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap()),
            ["plain"]
        );
        let serving = WorkerCaps {
            backends: ["vllm".to_owned()].into(),
            models: ["m".to_owned()].into(),
            ..cpu()
        };
        assert_eq!(
            names(&q.claim(&serving, 5, LEASE, at(0)).await.unwrap()),
            ["vllm"]
        );
        let gpu = WorkerCaps { gpu: true, ..cpu() };
        assert_eq!(q.claim(&gpu, 1000, LEASE, at(0)).await.unwrap().len(), 100);
        let other = WorkerCaps {
            worker_id: Some(WorkerId::parse("w-other").unwrap()),
            ..Default::default()
        };
        assert_eq!(
            names(&q.claim(&other, 5, LEASE, at(0)).await.unwrap()),
            ["pinned"]
        );
    }

    /// The claim query walks the claim index in order instead of sorting the pending set.
    #[tokio::test]
    async fn claim_uses_the_claim_index() {
        let (_dir, q) = a_queue().await;
        let sql = format!("EXPLAIN QUERY PLAN {CLAIM_WINDOW}");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(1_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(10_i64)
            .fetch_all(q.db.reader())
            .await
            .unwrap();
        let plan: Vec<String> = rows.iter().map(|r| r.get("detail")).collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("USING INDEX queue_claim (state=? AND priority_rank=? AND seq>?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }

    /// Renew extends held leases only; ack removes; nack returns to pending with a backoff and
    /// keeps the attempt count.
    #[tokio::test]
    async fn renew_ack_and_nack_act_on_held_leases() {
        let (_dir, q) = a_queue().await;
        q.enqueue(&[
            an_entry("a", Priority::Standard),
            an_entry("b", Priority::Standard),
        ])
        .await
        .unwrap();
        let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
        let (a, b) = (leases[0].lease_id.clone(), leases[1].lease_id.clone());
        let stranger = LeaseId::parse("lease-unknown").unwrap();
        assert_eq!(
            q.renew(&[a.clone(), stranger], at(30_000)).await.unwrap(),
            std::slice::from_ref(&a)
        );
        q.ack(std::slice::from_ref(&a)).await.unwrap();
        assert!(q.renew(&[a], at(40_000)).await.unwrap().is_empty());
        q.nack(&[(b.clone(), at(2_000))]).await.unwrap();
        assert!(q.renew(&[b], at(40_000)).await.unwrap().is_empty());
        assert!(
            q.claim(&cpu(), 5, LEASE, at(1_999))
                .await
                .unwrap()
                .is_empty()
        );
        let again = q.claim(&cpu(), 5, LEASE, at(2_000)).await.unwrap();
        assert_eq!(
            (names(&again), again[0].entry.attempt),
            (vec!["b".to_owned()], 2)
        );
        // The renewed lease outlived the first deadline; only b's expires at 12 s.
        let expired = q.expire(at(12_000)).await.unwrap();
        assert_eq!(expired.len(), 1);
    }

    /// Expiry requeues entries with deliveries left and dead-letters exhausted ones.
    #[tokio::test]
    async fn expire_requeues_or_dead_letters() {
        let (_dir, q) = a_queue().await;
        let once = QueueEntry {
            max_attempts: 1,
            ..an_entry("once", Priority::Standard)
        };
        q.enqueue(&[once, an_entry("twice", Priority::Standard)])
            .await
            .unwrap();
        let leases = q.claim(&cpu(), 5, LEASE, at(0)).await.unwrap();
        assert!(q.expire(at(9_999)).await.unwrap().is_empty());
        let expired = q.expire(at(10_000)).await.unwrap();
        let outcomes: BTreeSet<_> = expired
            .iter()
            .map(|e| format!("{} {:?}", e.lease.entry.task_id, e.outcome))
            .collect();
        assert_eq!(
            outcomes,
            ["once DeadLettered".to_owned(), "twice Requeued".to_owned()].into()
        );
        let mut as_claimed: Vec<_> = expired.into_iter().map(|e| e.lease).collect();
        as_claimed.sort_by(|x, y| x.entry.task_id.cmp(&y.entry.task_id));
        assert_eq!(as_claimed, leases, "expiry reports the lease as it was");

        let dead = q.list_dead(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].entry.task_id.as_str(), dead[0].reason.as_str()),
            ("once", "lease expired")
        );
        assert_eq!((dead[0].entry.attempt, dead[0].dead_at), (1, at(10_000)));
        let again = q.claim(&cpu(), 5, LEASE, at(10_000)).await.unwrap();
        assert_eq!(
            (names(&again), again[0].entry.attempt),
            (vec!["twice".to_owned()], 2)
        );
        let depth = q.depth().await.unwrap();
        assert_eq!(
            depth,
            QueueDepth {
                leased: 1,
                dead: 1,
                ..Default::default()
            }
        );
    }

    /// Dead letters list oldest first; requeue revives only dead ones with attempts reset.
    #[tokio::test]
    async fn requeue_dead_resets_attempts() {
        let (_dir, q) = a_queue().await;
        q.enqueue(&[
            an_entry("a", Priority::Standard),
            an_entry("b", Priority::Standard),
            an_entry("c", Priority::Batch),
        ])
        .await
        .unwrap();
        let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
        q.dead_letter(&[(leases[1].lease_id.clone(), "bad input".into())], at(1))
            .await
            .unwrap();
        q.dead_letter(&[(leases[0].lease_id.clone(), "boom".into())], at(2))
            .await
            .unwrap();
        let dead = q.list_dead(10).await.unwrap();
        assert_eq!(
            dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
            ["bad input", "boom"]
        );
        assert_eq!(q.list_dead(1).await.unwrap().len(), 1);

        let refs = [
            leases[0].entry.task_ref(),
            an_entry("c", Priority::Batch).task_ref(),
        ];
        assert_eq!(q.requeue_dead(&refs, at(50)).await.unwrap(), refs[..1]);
        let again = q.claim(&cpu(), 5, LEASE, at(50)).await.unwrap();
        assert_eq!(names(&again), ["a", "c"]);
        assert_eq!(
            (again[0].entry.attempt, again[0].entry.not_before),
            (1, at(50))
        );
        assert_eq!(q.list_dead(10).await.unwrap().len(), 1);
    }

    /// Discard drops entries whatever their state; enqueue of a dead task makes it pending.
    #[tokio::test]
    async fn discard_drops_entries_in_any_state() {
        let (_dir, q) = a_queue().await;
        let all = ["p", "l", "d"].map(|t| an_entry(t, Priority::Standard));
        q.enqueue(&all).await.unwrap();
        let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
        q.dead_letter(&[(leases[1].lease_id.clone(), "x".into())], at(0))
            .await
            .unwrap();
        assert_eq!(
            q.depth().await.unwrap(),
            QueueDepth {
                standard: 1,
                leased: 1,
                dead: 1,
                ..Default::default()
            }
        );
        q.discard(&all.iter().map(QueueEntry::task_ref).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
        q.ack(&[leases[0].lease_id.clone()]).await.unwrap();
        q.enqueue(&all[..1]).await.unwrap();
        assert_eq!(
            q.depth().await.unwrap(),
            QueueDepth {
                standard: 1,
                ..Default::default()
            }
        );
    }

    /// Leased and pending entries survive closing and reopening the file, leases still valid.
    #[tokio::test]
    async fn entries_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let q = SqliteLeaseQueue::new(SqliteDb::open(&path).await.unwrap());
        q.enqueue(&[
            an_entry("a", Priority::Standard),
            an_entry("b", Priority::Batch),
        ])
        .await
        .unwrap();
        let held = q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap();
        drop(q);

        let q = SqliteLeaseQueue::new(SqliteDb::open(&path).await.unwrap());
        assert_eq!(
            q.depth().await.unwrap(),
            QueueDepth {
                batch: 1,
                leased: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            q.renew(&[held[0].lease_id.clone()], at(20_000))
                .await
                .unwrap()
                .len(),
            1
        );
        let expired = q.expire(at(20_000)).await.unwrap();
        assert_eq!(
            expired[0].lease,
            Lease {
                expires_at: at(20_000),
                ..held[0].clone()
            }
        );
    }

    /// A scripted run of every operation gives the same answers as the memory queue.
    #[tokio::test]
    async fn behaves_like_the_memory_queue() {
        let (_dir, sql) = a_queue().await;
        let mem = MemoryLeaseQueue::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let workers = [
            cpu(),
            WorkerCaps { gpu: true, ..cpu() },
            WorkerCaps::default(),
        ];
        let mut held: Vec<(LeaseId, LeaseId)> = Vec::new();
        let mut now = 0_i64;
        for step in 0..400 {
            let task = |i: u64| format!("t{i}");
            match next(9) {
                0 | 1 => {
                    let mut batch = Vec::new();
                    for _ in 0..=next(3) {
                        let i = next(12);
                        let p = Priority::from_rank(next(3) as i64);
                        let mut e = if i % 4 == 0 {
                            gpu_entry(&task(i))
                        } else {
                            an_entry(&task(i), p)
                        };
                        e.not_before = at(now + next(3) as i64 * 1_000);
                        e.max_attempts = 1 + next(2) as u32;
                        batch.push(e);
                    }
                    sql.enqueue(&batch).await.unwrap();
                    mem.enqueue(&batch).await.unwrap();
                }
                2 | 3 => {
                    let w = &workers[next(3) as usize];
                    let max = next(4) as usize;
                    let a = mem.claim(w, max, LEASE, at(now)).await.unwrap();
                    let b = sql.claim(w, max, LEASE, at(now)).await.unwrap();
                    let strip = |v: &[Lease]| {
                        v.iter()
                            .map(|l| (l.entry.clone(), l.expires_at))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(strip(&a), strip(&b), "claim at step {step}");
                    held.extend(
                        a.into_iter()
                            .map(|l| l.lease_id)
                            .zip(b.into_iter().map(|l| l.lease_id)),
                    );
                }
                4 if !held.is_empty() => {
                    let (m, s) = held[next(held.len() as u64) as usize].clone();
                    match next(4) {
                        0 => assert_eq!(
                            mem.renew(&[m], at(now + 15_000)).await.unwrap().len(),
                            sql.renew(&[s], at(now + 15_000)).await.unwrap().len()
                        ),
                        1 => {
                            mem.ack(&[m]).await.unwrap();
                            sql.ack(&[s]).await.unwrap();
                        }
                        2 => {
                            mem.nack(&[(m, at(now + 1_000))]).await.unwrap();
                            sql.nack(&[(s, at(now + 1_000))]).await.unwrap();
                        }
                        _ => {
                            mem.dead_letter(&[(m, "x".into())], at(now)).await.unwrap();
                            sql.dead_letter(&[(s, "x".into())], at(now)).await.unwrap();
                        }
                    }
                }
                5 => {
                    let key = |v: Vec<Expired>| {
                        v.into_iter()
                            .map(|e| {
                                format!("{:?}", (e.lease.entry, e.lease.expires_at, e.outcome))
                            })
                            .collect::<BTreeSet<_>>()
                    };
                    let (a, b) = (
                        mem.expire(at(now)).await.unwrap(),
                        sql.expire(at(now)).await.unwrap(),
                    );
                    assert_eq!(key(a), key(b), "expire at step {step}");
                }
                6 => {
                    let refs: Vec<_> = (0..2)
                        .map(|_| an_entry(&task(next(12)), Priority::Batch).task_ref())
                        .collect();
                    if next(2) == 0 {
                        mem.discard(&refs).await.unwrap();
                        sql.discard(&refs).await.unwrap();
                    } else {
                        let a = mem.requeue_dead(&refs, at(now)).await.unwrap();
                        assert_eq!(
                            a,
                            sql.requeue_dead(&refs, at(now)).await.unwrap(),
                            "requeue at {step}"
                        );
                    }
                }
                _ => now += next(6) as i64 * 1_000,
            }
            assert_eq!(
                mem.depth().await.unwrap(),
                sql.depth().await.unwrap(),
                "depth at step {step}"
            );
            let dead = |v: Vec<DeadLetter>| {
                v.into_iter()
                    .map(|d| format!("{:?}", (d.entry, d.reason, d.dead_at)))
                    .collect::<BTreeSet<_>>()
            };
            let (a, b) = (
                mem.list_dead(100).await.unwrap(),
                sql.list_dead(100).await.unwrap(),
            );
            assert_eq!(dead(a), dead(b), "dead letters at step {step}");
        }
    }
}
