//! Streamed task output in memory: one vector per task, ids from one counter.

use std::collections::HashMap;

use crate::domain::{JobId, LeaseId, Status, TaskChunk, TaskRef};

use super::State;

/// Every task's chunks, and the last id handed out.
#[derive(Default)]
pub(super) struct Chunks {
    by_task: HashMap<TaskRef, Vec<TaskChunk>>,
    last_id: i64,
}

impl Chunks {
    /// Forgets the chunks of `job`'s tasks.
    pub(super) fn remove_job(&mut self, job: &JobId) {
        self.by_task.retain(|t, _| &t.job_id != job);
    }
}

/// [`JobStore::append_chunks`](crate::store::JobStore::append_chunks) on the locked state.
pub(super) fn append(
    state: &mut State,
    task: &TaskRef,
    lease: &LeaseId,
    first_seq: u32,
    texts: &[String],
) -> bool {
    let current = state.jobs.get(&task.job_id).is_some_and(|(_, record)| {
        record.tasks.iter().any(|t| {
            t.task_id == task.task_id
                && t.status == Status::Running
                && t.lease_id.as_ref() == Some(lease)
        })
    });
    if !current {
        return false;
    }
    let chunks = &mut state.chunks;
    let list = chunks.by_task.entry(task.clone()).or_default();
    for (seq, text) in (first_seq..).zip(texts) {
        if list.iter().any(|c| &c.lease_id == lease && c.seq == seq) {
            continue;
        }
        chunks.last_id += 1;
        list.push(TaskChunk {
            id: chunks.last_id,
            lease_id: lease.clone(),
            seq,
            text: text.clone(),
        });
    }
    true
}

/// [`JobStore::chunks_after`](crate::store::JobStore::chunks_after) on the locked state.
pub(super) fn after(state: &State, task: &TaskRef, after: i64, limit: usize) -> Vec<TaskChunk> {
    state
        .chunks
        .by_task
        .get(task)
        .into_iter()
        .flatten()
        .filter(|c| c.id > after)
        .take(limit)
        .cloned()
        .collect()
}
