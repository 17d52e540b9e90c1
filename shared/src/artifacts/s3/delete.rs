//! Deleting a job's objects: list the job's prefix a page at a time and delete each page with
//! one `DeleteObjects` (a page holds at most 1,000 keys, what one call takes).

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

use super::store::unavailable;
use crate::artifacts::ArtifactError;

/// Deletes every object whose key starts with `prefix`.
pub(super) async fn delete_prefix(
    client: &Client,
    bucket: &str,
    prefix: &str,
) -> Result<(), ArtifactError> {
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(unavailable)?;
        let objects = page
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .map(|k| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ArtifactError::Unavailable(format!("S3: {e}")))?;
        if !objects.is_empty() {
            let batch = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ArtifactError::Unavailable(format!("S3: {e}")))?;
            let out = client
                .delete_objects()
                .bucket(bucket)
                .delete(batch)
                .send()
                .await
                .map_err(unavailable)?;
            // Quiet mode lists only the keys that failed.
            if let Some(e) = out.errors().first() {
                return Err(ArtifactError::Unavailable(format!(
                    "S3: deleting {} of {prefix}: {}",
                    e.key().unwrap_or("an object"),
                    e.message().unwrap_or("failed")
                )));
            }
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(());
        }
    }
}
