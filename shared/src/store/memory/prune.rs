//! Retention in memory: terminal jobs past their time, removed with everything of theirs
//! under the store's one lock.

use super::State;
use crate::domain::{JobId, Timestamp};

/// [`JobStore::prune_finished`](crate::store::JobStore::prune_finished) on the locked state.
/// A scan of every job: the memory store holds what one process made since it started.
pub(super) fn prune_finished(state: &mut State, before: Timestamp, limit: usize) -> Vec<JobId> {
    let mut due: Vec<(Timestamp, JobId)> = state
        .jobs
        .iter()
        .filter_map(|(id, (_, r))| {
            let finished = r.job.finished_at.filter(|_| r.job.status.is_terminal())?;
            (finished < before && !state.webhooks.any_pending(id)).then(|| (finished, id.clone()))
        })
        .collect();
    due.sort();
    due.truncate(limit);
    let ids: Vec<JobId> = due.into_iter().map(|(_, id)| id).collect();
    for id in &ids {
        if let Some((seq, _)) = state.jobs.remove(id) {
            state.by_seq.remove(&seq);
        }
        state.idempotency.retain(|_, (job, _)| job != id);
        state.outbox.retain(|_, e| &e.job_id != id);
        state.webhooks.remove_job(id);
        state.chunks.remove_job(id);
    }
    ids
}

#[cfg(test)]
mod tests {
    use crate::store::memory::MemoryStore;
    use crate::testing::retention as contract;

    #[tokio::test]
    async fn prunes_old_terminal_jobs_with_their_rows() {
        contract::prunes_old_terminal_jobs_with_their_rows(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn keeps_open_recent_and_undelivered_jobs() {
        contract::keeps_open_recent_and_undelivered_jobs(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn honours_the_limit_and_repeats_harmlessly() {
        contract::honours_the_limit_and_repeats_harmlessly(&MemoryStore::new()).await;
    }
}
