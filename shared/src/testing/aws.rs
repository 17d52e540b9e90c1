//! The AWS emulator the tests run against (see [`services`](super::services)): an SDK
//! configuration pointed at it, and names of a test's own.

use aws_config::{Region, SdkConfig};
use aws_sdk_sqs::config::Credentials;

use super::services::Service;

/// A test's view of the emulator.
#[derive(Debug, Clone)]
pub struct TestAws {
    /// The emulator's endpoint, as `AWS_ENDPOINT_URL` would name it.
    pub endpoint: String,
    /// An SDK configuration for it: region `us-east-1`, fixed test credentials.
    pub sdk: SdkConfig,
}

impl TestAws {
    /// The emulator (found as [`services`](super::services) says), or `None` after printing why
    /// `test` is skipped.
    ///
    /// # Panics
    /// When no emulator is found and `CI` is set: a missing service is never silently green.
    pub async fn find(test: &str) -> Option<Self> {
        let endpoint = super::services::locate(Service::Aws, test)?;
        let sdk = aws_config::defaults(crate::aws::behavior_version())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .load()
            .await;
        Some(Self { endpoint, sdk })
    }

    /// `base` made unique to this call: queue, table and bucket names that no other test or
    /// run shares (lower case, within every service's naming rules).
    pub fn unique(base: &str) -> String {
        let id = uuid::Uuid::now_v7().simple().to_string();
        // The random tail of a v7 id; the time prefix is shared by tests started together.
        format!("{base}-{}", &id[id.len() - 12..])
    }
}
