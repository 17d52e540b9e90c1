//! Retention in Postgres: terminal jobs past their time, deleted with their rows in one
//! transaction.

use sqlx::PgConnection;

use super::db::PgError;
use super::rows::id as row_id;
use crate::domain::JobId;

/// Up to `$2` terminal jobs finished before `$1`, oldest first, without a pending webhook
/// delivery, locked. Walks `jobs_by_finished`, which holds only finished jobs: a job's
/// `finished_at` is set exactly when its status becomes terminal (`rules::set_job_status`), so
/// the column alone says "terminal", and a status condition here would lead the planner to
/// `jobs_by_status`, visiting every terminal job ever kept. `SKIP LOCKED`:
/// a job another transaction is changing (a retry, a late report) is left for the next pass
/// rather than waited for; once locked here, no update can give it a delivery or reopen it
/// before the delete commits.
const CANDIDATES: &str = "SELECT job_id FROM jobs
    WHERE finished_at_ms < $1
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w
          WHERE w.job_id = jobs.job_id AND w.state = 'pending')
    ORDER BY finished_at_ms LIMIT $2
    FOR UPDATE SKIP LOCKED";

/// What belongs to the jobs `$1`, children first. Each walks an index on `job_id` except the
/// outbox, which holds only entries not yet relayed (a handful, and none of a finished job's
/// as a rule).
const DELETES: [&str; 7] = [
    "DELETE FROM task_chunks WHERE job_id = ANY($1)",
    "DELETE FROM webhook_deliveries WHERE job_id = ANY($1)",
    "DELETE FROM idempotency_keys WHERE job_id = ANY($1)",
    "DELETE FROM queue_entries WHERE job_id = ANY($1)",
    "DELETE FROM outbox WHERE job_id = ANY($1)",
    "DELETE FROM tasks WHERE job_id = ANY($1)",
    "DELETE FROM jobs WHERE job_id = ANY($1)",
];

/// [`JobStore::prune_finished`](crate::store::JobStore::prune_finished) inside the caller's
/// transaction.
#[tracing::instrument(skip_all)]
pub(super) async fn prune_finished(
    conn: &mut PgConnection,
    before_ms: i64,
    limit: i64,
) -> Result<Vec<JobId>, PgError> {
    let rows = sqlx::query(CANDIDATES)
        .bind(before_ms)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    let ids = rows
        .iter()
        .map(|r| row_id(r, "job_id"))
        .collect::<Result<Vec<JobId>, _>>()?;
    if ids.is_empty() {
        return Ok(ids);
    }
    let names: Vec<&str> = ids.iter().map(JobId::as_str).collect();
    for sql in DELETES {
        sqlx::query(sql).bind(&names).execute(&mut *conn).await?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use crate::store::Dispatch;
    use crate::store::postgres::PostgresStore;
    use crate::testing::postgres::TestDb;
    use crate::testing::retention as contract;

    async fn store(name: &str) -> Option<(TestDb, PostgresStore)> {
        let t = TestDb::create(name).await?;
        let store = PostgresStore::new(t.db.clone(), Dispatch::Outbox);
        Some((t, store))
    }

    #[tokio::test]
    async fn prunes_old_terminal_jobs_with_their_rows() {
        let Some((_t, s)) = store("prune_old_terminal_jobs").await else {
            return;
        };
        contract::prunes_old_terminal_jobs_with_their_rows(&s).await;
    }

    #[tokio::test]
    async fn keeps_open_recent_and_undelivered_jobs() {
        let Some((_t, s)) = store("prune_keeps_open_recent").await else {
            return;
        };
        contract::keeps_open_recent_and_undelivered_jobs(&s).await;
    }

    /// The candidates come from the finished-time index (with sequential scans priced out,
    /// as they would be on a table of many jobs), not a scan of every job.
    #[tokio::test]
    async fn prune_uses_the_finished_index() {
        let Some((t, _s)) = store("prune_uses_the_finished_index").await else {
            return;
        };
        let mut conn = t.db.pool().acquire().await.unwrap();
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN {}",
            super::CANDIDATES
        )))
        .bind(0_i64)
        .bind(10_i64)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("jobs_by_finished"), "{plan}");
    }

    #[tokio::test]
    async fn honours_the_limit_and_repeats_harmlessly() {
        let Some((_t, s)) = store("prune_honours_limit").await else {
            return;
        };
        contract::honours_the_limit_and_repeats_harmlessly(&s).await;
    }
}
