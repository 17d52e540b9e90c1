//! The artifact seam: where task outputs are written and read back.
//!
//! Workers `put` outputs under `artifact://<job>/<task>/<name>`; executors `get` their
//! dependencies' outputs; the gateway `open`s an output to serve it (bytes, or a redirect for
//! backends that can hand out URLs). One trait, one file per backend: `local.rs` now, S3/MinIO
//! later.

use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::domain::{Artifact, JobId, TaskId};

pub mod local;
mod uri;

pub use uri::{ArtifactUriError, local_path};

/// Which artifact store holds outputs (`SPLAI_ARTIFACT_BACKEND`): read the same way by the
/// gateway and the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArtifactBackend {
    /// Files under `SPLAI_ARTIFACT_ROOT`.
    #[default]
    Local,
}

impl FromStr for ArtifactBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "s3" | "minio" => Err(format!(
                "`{s}` is not supported by this build yet; use `local` (S3/MinIO artifacts \
                 arrive with the AWS backends)"
            )),
            other => Err(format!("`{other}` is not one of local, s3, minio")),
        }
    }
}

impl ArtifactBackend {
    /// The store, rooted at `root` for the local backend.
    pub fn open(self, root: &Path) -> Arc<dyn ArtifactStore> {
        match self {
            Self::Local => Arc::new(local::LocalArtifactStore::new(root)),
        }
    }
}

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

/// The name a task's output is stored under: `artifact://<job>/<task>/output.json`.
pub const OUTPUT_NAME: &str = "output.json";

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

    /// Where a task's output goes ([`OUTPUT_NAME`]).
    pub fn output(job_id: JobId, task_id: TaskId) -> Self {
        Self {
            job_id,
            task_id,
            name: OUTPUT_NAME.to_owned(),
        }
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
