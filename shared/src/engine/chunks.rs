//! Streamed task output: a worker appends chunks of a running task's answer under its lease;
//! gateways relaying the stream read them back. The store is where chunks meet (a worker's
//! request and the waiting client may reach different gateway instances); the in-process
//! wake only saves a waiting relay in the same process its next poll.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::{Engine, EngineError};
use crate::domain::{LeaseId, TaskChunk, TaskRef};

impl Engine {
    /// Appends chunks of `task`'s output as the holder of `lease` (see
    /// [`JobStore::append_chunks`](crate::store::JobStore::append_chunks)) and wakes this
    /// process's relays. `false` when the lease is not the task's current one.
    ///
    /// # Errors
    /// Store failures.
    pub async fn append_chunks(
        &self,
        task: &TaskRef,
        lease: &LeaseId,
        first_seq: u32,
        texts: &[String],
    ) -> Result<bool, EngineError> {
        let current = self
            .backends
            .jobs
            .append_chunks(task, lease, first_seq, texts)
            .await?;
        if current {
            let _ = self.chunk_wake.send(Arc::new(task.clone()));
        }
        Ok(current)
    }

    /// Chunks of `task` after `after` (a chunk id; 0 for the start), oldest first.
    ///
    /// # Errors
    /// Store failures.
    pub async fn chunks_after(
        &self,
        task: &TaskRef,
        after: i64,
        limit: usize,
    ) -> Result<Vec<TaskChunk>, EngineError> {
        Ok(self.backends.jobs.chunks_after(task, after, limit).await?)
    }

    /// Tasks that received chunks through this process, as they arrive. Chunks that arrive
    /// through another instance are not announced here: relays also poll the store.
    pub fn subscribe_chunks(&self) -> broadcast::Receiver<Arc<TaskRef>> {
        self.chunk_wake.subscribe()
    }
}
