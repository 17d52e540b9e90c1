//! The one AWS configuration every AWS backend (SQS queue, DynamoDB store, S3 artifacts) is built
//! from: loaded once at start-up through the standard chain, so `AWS_ENDPOINT_URL` (LocalStack,
//! moto, MinIO), `AWS_REGION`/`AWS_DEFAULT_REGION` and the usual credential sources all apply.

#[cfg(feature = "aws")]
use aws_config::{BehaviorVersion, SdkConfig};

#[cfg(feature = "aws")]
/// The behaviour version every client is pinned to (STACK.md §2): retries on, 3.1 s connect
/// timeout. Pinned rather than `latest()` so an SDK upgrade cannot change behaviour silently.
pub fn behavior_version() -> BehaviorVersion {
    BehaviorVersion::v2026_01_12()
}

/// Resource names and set-up for the AWS backends (`SPLAI_SQS_QUEUE_PREFIX`,
/// `SPLAI_DYNAMODB_TABLE`, `SPLAI_S3_*`, `SPLAI_AWS_CREATE_RESOURCES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// `SPLAI_SQS_QUEUE_PREFIX` (default `splai`): queues `<prefix>-interactive`,
    /// `<prefix>-standard`, `<prefix>-batch` and the dead letter `<prefix>-dead`.
    pub sqs_queue_prefix: String,
    /// `SPLAI_DYNAMODB_TABLE` (default `splai`).
    pub dynamodb_table: String,
    /// `SPLAI_S3_BUCKET` (default `splai-artifacts`; `SPLAI_MINIO_BUCKET` is accepted too).
    pub s3_bucket: String,
    /// `SPLAI_S3_PREFIX` (default empty): the key prefix of every artifact.
    pub s3_prefix: String,
    /// `SPLAI_AWS_CREATE_RESOURCES` (default false; LocalStack and development only): create
    /// missing queues, table and bucket at start-up instead of failing.
    pub create_resources: bool,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            sqs_queue_prefix: "splai".into(),
            dynamodb_table: "splai".into(),
            s3_bucket: "splai-artifacts".into(),
            s3_prefix: String::new(),
            create_resources: false,
        }
    }
}

/// Why the AWS configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwsSetupError {
    /// No region from any source.
    #[error(
        "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or a region in the AWS profile)"
    )]
    NoRegion,
}

/// The SDK configuration, loaded on first use (from the environment, the profile files and
/// the instance/task metadata, as every AWS tool does) and then shared: one load for every AWS backend
/// that [`open`](crate::backends::open) builds (a DynamoDB store and an SQS queue share it).
#[derive(Debug, Default)]
pub struct SharedSdk {
    #[cfg(feature = "aws")]
    cell: tokio::sync::OnceCell<SdkConfig>,
}

#[cfg(feature = "aws")]
impl SharedSdk {
    /// The configuration, loaded by the first caller.
    ///
    /// # Errors
    /// No region is configured anywhere.
    pub async fn get(&self) -> Result<&SdkConfig, AwsSetupError> {
        let sdk = self.sdk().await;
        if sdk.region().is_none() {
            return Err(AwsSetupError::NoRegion);
        }
        Ok(sdk)
    }

    /// The configuration as loaded, with or without a region (an S3-compatible store such as
    /// MinIO needs none).
    pub async fn sdk(&self) -> &SdkConfig {
        self.cell
            .get_or_init(|| aws_config::defaults(behavior_version()).load())
            .await
    }
}
