//! Claiming: one statement finds the entries a worker may run, in claim order, and leases them.

use std::time::Duration;

use super::lease_at;
use crate::clock::{to_millis, truncate_millis};
use crate::domain::{Lease, LeaseId, Timestamp, WorkerCaps};
use crate::store::ClaimRequest;
use crate::store::sqlite::{SqliteDb, entry_columns, to_json};

/// Leases up to `?8` claimable entries to worker `?2` until `?3`, and returns them.
///
/// The inner SELECT walks the `queue_pending` index (`priority_rank`, `seq` of pending rows)
/// from its start: higher classes first, FIFO within a class, stopping at the limit. So its
/// cost follows the entries skipped (in backoff or not for this worker), not the queue length,
/// and no sort is needed. The filter is [`Requirements::admit`](crate::domain::Requirements::admit) in SQL
/// (`?5` gpu, `?6`/`?7` JSON arrays of the worker's backends and models); the test
/// `claim_filter_agrees_with_admit` holds the two to the same answers.
///
/// The limit is `(SELECT ?8)`, not `?8`: a bare bound `LIMIT` made SQLite prepare the
/// statement again at every claim (the module docs of `store/sqlite/db.rs` say why).
///
/// Each row's lease id is the claim's fresh prefix `?1` (a time-ordered UUID) plus its rank and
/// zero-padded `seq`: unique without a random id per row, never reused because the prefix is
/// new for every claim, and, like one generated id per row in claim order, sorting in claim
/// order, which is how `expire` breaks ties between leases with the same deadline. Ending
/// with `seq` also lets every later statement on the lease find its row by rowid
/// (`lease_seq`), so no index of lease ids is kept.
pub(super) const CLAIM: &str = concat!(
    "UPDATE queue_entries SET state = 'leased', attempt = attempt + 1,
         lease_id = ?1 || printf('%d-%019d', priority_rank, seq),
         leased_by = ?2, lease_expires_ms = ?3
     WHERE seq IN (
         SELECT seq FROM queue_entries
         WHERE state = 'pending' AND not_before_ms <= ?4
           AND (requires_gpu = 0 OR ?5)
           AND (backend IS NULL OR backend IN (SELECT value FROM json_each(?6)))
           AND (model IS NULL OR EXISTS (SELECT 1 FROM json_each(?7) WHERE value IN (model, '*')))
           AND (target_worker IS NULL OR target_worker = ?2)
         ORDER BY priority_rank, seq
         LIMIT (SELECT ?8))
     RETURNING seq, ",
    entry_columns!(),
    ", lease_id, leased_by, lease_expires_ms"
);

/// Whether any entry is claimable by `?2` at `?1`: the claim's filter, read-only. Idle workers
/// long-poll, and every dispatch wakes all of them; asking a reader first keeps the ones
/// that would find nothing off the single writer connection.
pub(super) const ANY_CLAIMABLE: &str = "SELECT EXISTS (
        SELECT 1 FROM queue_entries
        WHERE state = 'pending' AND not_before_ms <= ?1
          AND (requires_gpu = 0 OR ?3)
          AND (backend IS NULL OR backend IN (SELECT value FROM json_each(?4)))
          AND (model IS NULL OR EXISTS (SELECT 1 FROM json_each(?5) WHERE value IN (model, '*')))
          AND (target_worker IS NULL OR target_worker = ?2))";

/// One claim, its worker's backends and models encoded for the statements once.
pub(crate) struct Claim<'a> {
    request: ClaimRequest<'a>,
    backends: String,
    models: String,
}

impl<'a> Claim<'a> {
    /// The claim `request` (`max` > 0) ready to run.
    pub(crate) fn new(request: ClaimRequest<'a>) -> rusqlite::Result<Self> {
        Ok(Claim {
            backends: to_json(&request.worker.backends)?,
            models: to_json(&request.worker.models)?,
            request,
        })
    }

    fn worker_id(&self) -> Option<&str> {
        self.request.worker.worker_id.as_ref().map(|w| w.as_str())
    }

    /// Whether any entry is claimable, asked of a reader ([`ANY_CLAIMABLE`]).
    pub(crate) fn any(&self, db: &SqliteDb) -> rusqlite::Result<bool> {
        db.read(|tx| {
            tx.prepare_cached(ANY_CLAIMABLE)?.query_row(
                (
                    to_millis(self.request.now),
                    self.worker_id(),
                    self.request.worker.gpu,
                    &self.backends,
                    &self.models,
                ),
                |r| r.get(0),
            )
        })
    }

    /// Leases the entries inside the caller's write transaction; returns them in claim order.
    pub(crate) fn run(&self, conn: &rusqlite::Connection) -> rusqlite::Result<Vec<Lease>> {
        let ClaimRequest {
            worker,
            max,
            lease_for,
            now,
        } = self.request;
        let prefix = format!("{}-", LeaseId::generate());
        let expires_at = truncate_millis(now + lease_for);
        let mut leases = conn
            .prepare_cached(CLAIM)?
            .query_map(
                (
                    &prefix,
                    self.worker_id(),
                    to_millis(expires_at),
                    to_millis(now),
                    worker.gpu,
                    &self.backends,
                    &self.models,
                    i64::try_from(max).unwrap_or(i64::MAX),
                ),
                |r| {
                    // RETURNING `seq`, then the lease's columns (`priority_rank` the fourth
                    // of them); read by position, as `lease_at` says why.
                    debug_assert_eq!(r.as_ref().column_name(0).ok(), Some("seq"));
                    let order: (i64, i64) = (r.get(4)?, r.get(0)?);
                    Ok((order, lease_at(r, 1)?))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // RETURNING comes in no promised order; claim order is priority, then FIFO.
        leases.sort_by_key(|(order, _)| *order);
        Ok(leases.into_iter().map(|(_, l)| l).collect())
    }
}

/// Leases up to `max` (> 0) entries to `worker` for `lease_for` from `now`, in claim order.
pub(super) async fn claim(
    db: &SqliteDb,
    worker: &WorkerCaps,
    max: usize,
    lease_for: Duration,
    now: Timestamp,
) -> rusqlite::Result<Vec<Lease>> {
    let claim = Claim::new(ClaimRequest {
        worker,
        max,
        lease_for,
        now,
    })?;
    if !claim.any(db)? {
        return Ok(Vec::new());
    }
    db.write(|tx| claim.run(tx)).await
}
