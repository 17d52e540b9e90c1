//! The artifact seam: where task outputs are written and read back.
//!
//! Workers `put` outputs under `artifact://<job>/<task>/<name>`; executors `get` their
//! dependencies' outputs; the gateway `open`s an output to serve it (bytes, or a redirect for
//! backends that can hand out URLs). One trait, one file per backend: `local.rs` now, S3/MinIO
//! later.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::domain::{Artifact, JobId, TaskId};

pub mod local;
mod uri;

pub use uri::{ArtifactUriError, local_path};

/// Errors crossing the artifact boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The URI or name is not one this store can hold.
    #[error(transparent)]
    InvalidUri(#[from] ArtifactUriError),
    /// Nothing is stored under the URI.
    #[error("artifact not found: {0}")]
    NotFound(String),
    /// The backend failed or could not be reached; the caller may retry.
    #[error("artifact store unavailable: {0}")]
    Unavailable(String),
}

/// Where an artifact goes: `artifact://<job>/<task>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactKey {
    /// The job that produced it.
    pub job_id: JobId,
    /// The task that produced it.
    pub task_id: TaskId,
    /// Its file name within the task, one plain path segment.
    pub name: String,
}

impl ArtifactKey {
    /// A key, checking that `name` is one plain path segment.
    ///
    /// # Errors
    /// A name that is empty, `.`/`..`, or contains a path separator.
    pub fn new(job_id: JobId, task_id: TaskId, name: &str) -> Result<Self, ArtifactError> {
        let key = Self {
            job_id,
            task_id,
            name: name.to_owned(),
        };
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\']);
        if !plain {
            return Err(ArtifactUriError::Shape(key.uri()).into());
        }
        Ok(key)
    }

    /// The artifact's URI.
    pub fn uri(&self) -> String {
        format!("artifact://{}/{}/{}", self.job_id, self.task_id, self.name)
    }
}

/// A byte stream of an artifact's contents.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How to hand an artifact to a client.
pub enum Download {
    /// Serve these bytes.
    Bytes {
        /// The contents.
        body: ByteStream,
        /// The length, when known.
        size: Option<u64>,
    },
    /// Send the client to this URL (a presigned object URL).
    Redirect(String),
}

/// Stores and serves task outputs.
#[async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Short name, recorded as the artifact's `type` (`local`, `s3`).
    fn backend_name(&self) -> &'static str;

    /// Writes `body` under `key`, replacing what an earlier attempt wrote. Readers never see a
    /// partly written artifact.
    async fn put(
        &self,
        key: &ArtifactKey,
        body: Bytes,
        mime_type: &str,
    ) -> Result<Artifact, ArtifactError>;

    /// Reads a whole artifact (dependency outputs, which are small).
    async fn get(&self, uri: &str) -> Result<Bytes, ArtifactError>;

    /// Opens an artifact for a client download.
    async fn open(&self, uri: &str) -> Result<Download, ArtifactError>;
}
