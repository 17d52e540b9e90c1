//! Retention in SQLite: terminal jobs past their time, deleted with their rows in one write
//! transaction.

use rusqlite::Connection;

use super::rows::id as row_id;
use crate::clock::to_millis;
use crate::domain::{JobId, Timestamp};

/// Up to `?2` terminal jobs finished before `?1`, oldest first, without a pending webhook
/// delivery. Walks `jobs_by_finished`, which holds only finished jobs (the unary `+` keeps
/// the planner off `jobs_by_status`, which would visit every terminal job ever kept).
pub(super) const CANDIDATES: &str = "SELECT job_id FROM jobs
    WHERE finished_at_ms IS NOT NULL AND finished_at_ms < ?1
      AND +status IN ('Completed', 'Failed', 'Canceled')
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
          WHERE w.job_id = jobs.job_id AND w.state = 'pending')
    ORDER BY finished_at_ms LIMIT (SELECT ?2)";

/// What belongs to a job, children first. Each walks an index on `job_id` except the outbox,
/// which holds only entries not yet relayed (a handful, and none of a finished job's as a
/// rule).
const DELETES: [&str; 7] = [
    "DELETE FROM task_chunks WHERE job_id = ?1",
    "DELETE FROM webhook_deliveries WHERE job_id = ?1",
    "DELETE FROM idempotency_keys WHERE job_id = ?1",
    "DELETE FROM queue_entries WHERE job_id = ?1",
    "DELETE FROM outbox WHERE job_id = ?1",
    "DELETE FROM tasks WHERE job_id = ?1",
    "DELETE FROM jobs WHERE job_id = ?1",
];

/// [`JobStore::prune_finished`](crate::store::JobStore::prune_finished), inside the caller's
/// write transaction: the candidates are chosen and deleted under one write lock, so a job
/// retried or given a delivery in between cannot be caught half way.
#[tracing::instrument(skip_all, fields(limit))]
pub(super) fn prune_finished(
    conn: &Connection,
    before: Timestamp,
    limit: usize,
) -> rusqlite::Result<Vec<JobId>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let ids = conn
        .prepare_cached(CANDIDATES)?
        .query_map((to_millis(before), limit), |r| row_id(r, "job_id"))?
        .collect::<rusqlite::Result<Vec<JobId>>>()?;
    for sql in DELETES {
        let mut delete = conn.prepare_cached(sql)?;
        for id in &ids {
            delete.execute([id.as_str()])?;
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use crate::store::sqlite::{SqliteDb, SqliteStore};
    use crate::store::{Dispatch, JobStore, QueueWrites};
    use crate::testing::retention as contract;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        (dir, SqliteStore::new(db, Dispatch::Outbox))
    }

    #[tokio::test]
    async fn prunes_old_terminal_jobs_with_their_rows() {
        let (_dir, s) = store().await;
        contract::prunes_old_terminal_jobs_with_their_rows(&s).await;
    }

    #[tokio::test]
    async fn keeps_open_recent_and_undelivered_jobs() {
        let (_dir, s) = store().await;
        contract::keeps_open_recent_and_undelivered_jobs(&s).await;
    }

    #[tokio::test]
    async fn honours_the_limit_and_repeats_harmlessly() {
        let (_dir, s) = store().await;
        contract::honours_the_limit_and_repeats_harmlessly(&s).await;
    }

    /// With the queue in the same file (`Direct`), a pruned job's queue entries go too (the
    /// contract sees only what the traits show; this looks at the table).
    #[tokio::test]
    async fn direct_queue_entries_go_with_their_job() {
        use crate::engine::rules::{self, Effects};
        use crate::testing::records::{a_record, at};
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let s = SqliteStore::new(db, Dispatch::Direct);
        let record = a_record("job-direct", &["a", "b"]);
        let ready = rules::ready_entries(&record, at(0));
        assert!(!ready.is_empty());
        s.create_job(&record, &ready, None).await.unwrap();
        let id = record.job.job_id.clone();
        s.update_jobs(std::slice::from_ref(&id), &mut |r| {
            rules::cancel(r, at(1_000), &mut Effects::default());
            QueueWrites::default()
        })
        .await
        .unwrap();
        let entries = |s: &SqliteStore| -> i64 {
            s.db.read(|tx| {
                tx.query_row(
                    "SELECT COUNT(*) FROM queue_entries WHERE job_id = 'job-direct'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap()
        };
        assert!(entries(&s) > 0, "the ready entries are queued");

        let pruned = s.prune_finished(at(2_000), 10).await.unwrap();

        assert_eq!(pruned, vec![id]);
        assert_eq!(entries(&s), 0);
    }

    /// The candidates come from the finished-time index, not a scan of every job.
    #[tokio::test]
    async fn prune_uses_the_finished_index() {
        let (_dir, s) = store().await;
        let plan = crate::store::sqlite::query_plan(&s.db, super::CANDIDATES);
        assert!(plan.contains("jobs_by_finished"), "{plan}");
    }
}
