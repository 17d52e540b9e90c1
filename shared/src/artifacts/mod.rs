//! The artifact seam: where task outputs are written and read back.
//!
//! Workers `put` outputs under `artifact://<job>/<task>/<name>`; executors `get` their
//! dependencies' outputs; the gateway `open`s an output to serve it (bytes, or a redirect for
//! backends that can hand out URLs). One trait, one file (or folder) per backend: `local.rs`,
//! `s3/`. A store that can presign uploads also implements [`UploadSigner`], so the gateway can
//! hand workers without credentials a URL to put their output to.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::domain::{Artifact, JobId, TaskId, Timestamp};

pub mod local;
pub mod s3;
mod uri;

pub use uri::{ArtifactUriError, local_path};
pub(crate) use uri::{job_folder, relative_path};

/// Which artifact store holds outputs (`SPLAI_ARTIFACT_BACKEND`): read the same way by the
/// gateway and the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArtifactBackend {
    /// Files under `SPLAI_ARTIFACT_ROOT`.
    #[default]
    Local,
    /// An S3 bucket (`SPLAI_S3_*`).
    S3,
    /// S3 on MinIO: path-style URLs and compatible checksums by default (`SPLAI_MINIO_*`).
    Minio,
}

impl FromStr for ArtifactBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            "minio" => Ok(Self::Minio),
            other => Err(format!("`{other}` is not one of local, s3, minio")),
        }
    }
}

/// An opened artifact store, and its upload signer when it can presign uploads.
#[derive(Clone)]
pub struct Artifacts {
    /// The store.
    pub store: Arc<dyn ArtifactStore>,
    /// The same store as an [`UploadSigner`] (S3), or `None` (local files).
    pub signer: Option<Arc<dyn UploadSigner>>,
}

impl ArtifactBackend {
    /// Opens the store: files under `root`, or the S3 bucket of `s3` (checked at once, so a
    /// bad setting fails start-up) with the SDK configuration of `aws`.
    ///
    /// # Errors
    /// For S3: no region, an unreachable endpoint, a missing or forbidden bucket.
    pub async fn open(
        self,
        root: &Path,
        s3: &s3::S3Config,
        aws: &crate::aws::SharedSdk,
    ) -> Result<Artifacts, s3::S3SetupError> {
        match self {
            Self::Local => Ok(Artifacts {
                store: Arc::new(local::LocalArtifactStore::new(root)),
                signer: None,
            }),
            #[cfg(feature = "aws")]
            Self::S3 | Self::Minio => {
                let sdk = aws.sdk().await;
                let store = Arc::new(s3::S3ArtifactStore::connect(sdk, s3.clone()).await?);
                Ok(Artifacts {
                    store: store.clone(),
                    signer: Some(store),
                })
            }
            #[cfg(not(feature = "aws"))]
            Self::S3 | Self::Minio => {
                let _ = (s3, aws);
                Err(s3::S3SetupError::NotBuilt)
            }
        }
    }
}

/// Where `SPLAI_ARTIFACT_UPLOAD` says workers put outputs stored as artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArtifactUpload {
    /// Each worker writes to its own artifact store (the default).
    #[default]
    Direct,
    /// The gateway hands each assignment a presigned URL to put its output to, so workers
    /// need no storage credentials (needs a store that presigns: S3/MinIO).
    Presigned,
}

impl FromStr for ArtifactUpload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "presigned" => Ok(Self::Presigned),
            other => Err(format!("`{other}` is not one of direct, presigned")),
        }
    }
}

/// A URL a worker puts an output to, with no credentials of its own; it then reports the
/// artifact as `{type: kind, url: uri, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadUrl {
    /// Where to `PUT` the bytes.
    pub url: String,
    /// The artifact URI the output is recorded under.
    pub uri: String,
    /// The store's name, the artifact's `type` (`s3`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Headers the URL was signed with; the `PUT` must send exactly these.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// When the URL stops working.
    #[serde(with = "crate::domain::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
}

/// Hands out upload URLs for a store's artifacts.
#[async_trait]
pub trait UploadSigner: Send + Sync {
    /// A URL that accepts one `PUT` of `key` with `mime_type`, valid at least for
    /// `task_timeout` plus the store's usual presign expiry.
    async fn presign_put(
        &self,
        key: &ArtifactKey,
        mime_type: &str,
        task_timeout: Duration,
    ) -> Result<UploadUrl, ArtifactError>;
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

    /// Writes a body that arrives in chunks, like [`put`](Self::put). The default collects it
    /// first; S3 overrides it to upload part by part, holding one part in memory.
    async fn put_stream(
        &self,
        key: &ArtifactKey,
        body: ByteStream,
        mime_type: &str,
    ) -> Result<Artifact, ArtifactError> {
        let chunks: Vec<Bytes> = body
            .try_collect()
            .await
            .map_err(|e| ArtifactError::Unavailable(format!("reading the artifact body: {e}")))?;
        self.put(key, Bytes::from(chunks.concat()), mime_type).await
    }

    /// Reads a whole artifact (dependency outputs, which are small).
    async fn get(&self, uri: &str) -> Result<Bytes, ArtifactError>;

    /// Opens an artifact for a client download.
    async fn open(&self, uri: &str) -> Result<Download, ArtifactError>;

    /// Deletes every artifact of `job` (everything under `artifact://<job>/`), for retention.
    /// A job with none is fine, so a repeat is harmless.
    async fn delete_job(&self, job: &JobId) -> Result<(), ArtifactError>;
}
