//! Streamed output: pieces of a running task's answer (model tokens), sent by the worker while
//! the task runs and relayed to clients waiting on the job. The final output still arrives
//! through the task's report; chunks are only for showing progress early.

use serde::{Deserialize, Serialize};

use super::LeaseId;

/// One stored chunk of a task's streamed output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskChunk {
    /// Position in the task's chunk log, assigned by the store; increases with every append.
    pub id: i64,
    /// The lease (attempt) that produced it.
    pub lease_id: LeaseId,
    /// The worker's number for it within the lease, from 0; a repeated number is ignored.
    pub seq: u32,
    /// The text.
    pub text: String,
}
