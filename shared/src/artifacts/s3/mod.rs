//! Artifacts on S3 or an S3-compatible store (MinIO): settings in `config.rs`, the store in
//! `store.rs`, deleting a job's objects in `delete.rs` (built with the `aws` feature).

mod config;
#[cfg(feature = "aws")]
mod delete;
#[cfg(feature = "aws")]
mod store;

pub use config::{MIN_PART_SIZE, S3Config, S3ConfigError};
#[cfg(feature = "aws")]
pub use store::S3ArtifactStore;

/// Why the S3 artifact store cannot start; each names the variable to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum S3SetupError {
    /// No region from any source.
    #[error(
        "no AWS region for S3 artifacts: set SPLAI_S3_REGION or AWS_REGION (or a region in the \
         AWS profile)"
    )]
    NoRegion,
    /// The bucket does not exist and may not be created.
    #[error(
        "the S3 artifact bucket `{0}` does not exist: create it, point SPLAI_S3_BUCKET at \
         another, or set SPLAI_AWS_CREATE_RESOURCES=true (development only)"
    )]
    NoBucket(String),
    /// The endpoint did not answer.
    #[error(
        "cannot reach S3 at {endpoint} (SPLAI_S3_ENDPOINT, SPLAI_MINIO_ENDPOINT or \
         AWS_ENDPOINT_URL): {detail}"
    )]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// The bucket answered with an error (forbidden, bad credentials, ...).
    #[error("the S3 artifact bucket `{bucket}` (SPLAI_S3_BUCKET) cannot be used: {detail}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// What failed.
        detail: String,
    },
    /// This build has no S3 support.
    #[error("SPLAI_ARTIFACT_BACKEND=s3 needs a build with the `aws` feature")]
    NotBuilt,
}
