//! The S3 artifact store: one object per artifact URI, multipart for large outputs, presigned
//! URLs for downloads and for uploads by workers without credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::{S3Config, S3SetupError};
use crate::artifacts::{
    ArtifactError, ArtifactKey, ArtifactStore, ByteStream, Download, UploadSigner, UploadUrl,
    job_folder, relative_path,
};
use crate::domain::{Artifact, JobId};

/// An [`ArtifactStore`] over one S3 (or S3-compatible) bucket.
#[derive(Debug, Clone)]
pub struct S3ArtifactStore {
    client: Client,
    config: S3Config,
}

impl S3ArtifactStore {
    /// A store on `config.bucket`, its client built from the shared `sdk` configuration with
    /// the S3 settings on top. Checks the bucket (creating it when `create_bucket` allows).
    ///
    /// # Errors
    /// No region, an unreachable endpoint, or a missing or forbidden bucket, each naming the
    /// variable to fix.
    pub async fn connect(sdk: &SdkConfig, config: S3Config) -> Result<Self, S3SetupError> {
        let mut b =
            aws_sdk_s3::config::Builder::from(sdk).force_path_style(config.force_path_style);
        if let Some(region) = &config.region {
            b = b.region(Region::new(region.clone()));
        } else if config.compatible && sdk.region().is_none() {
            // S3-compatible stores accept any region name; signing needs one.
            b = b.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            b = b.endpoint_url(endpoint);
        }
        if let Some((id, secret)) = &config.static_credentials {
            b = b.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "SPLAI_MINIO_ACCESS_KEY",
            ));
        }
        if config.compatible {
            b = b
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let conf = b.build();
        let Some(region) = conf.region().cloned() else {
            return Err(S3SetupError::NoRegion);
        };
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_owned))
            .unwrap_or_else(|| format!("AWS S3 in {region}"));
        let store = Self {
            client: Client::from_conf(conf),
            config,
        };
        store.check_bucket(&endpoint, &region).await?;
        Ok(store)
    }

    /// Fails start-up when the bucket cannot be used; creates it if allowed and missing.
    async fn check_bucket(&self, endpoint: &str, region: &Region) -> Result<(), S3SetupError> {
        let bucket = &self.config.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_not_found() => {}
            Err(e @ (SdkError::DispatchFailure(_) | SdkError::TimeoutError(_))) => {
                return Err(S3SetupError::Unreachable {
                    endpoint: endpoint.to_owned(),
                    detail: DisplayErrorContext(e).to_string(),
                });
            }
            Err(e) => {
                return Err(S3SetupError::Bucket {
                    bucket: bucket.clone(),
                    detail: DisplayErrorContext(e).to_string(),
                });
            }
        }
        if !self.config.create_bucket {
            return Err(S3SetupError::NoBucket(bucket.clone()));
        }
        let mut create = self.client.create_bucket().bucket(bucket);
        // us-east-1 is the one region that takes no location constraint.
        if region.as_ref() != "us-east-1" {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_ref()))
                    .build(),
            );
        }
        create
            .send()
            .await
            .map_err(|e| S3SetupError::Bucket {
                bucket: bucket.clone(),
                detail: format!("creating it: {}", DisplayErrorContext(e)),
            })
            .map(|_| ())
    }

    fn object_key(&self, uri: &str) -> Result<String, ArtifactError> {
        Ok(self.config.object_key(relative_path(uri)?))
    }

    fn artifact(&self, key: &ArtifactKey, size_bytes: u64, mime_type: &str) -> Artifact {
        Artifact {
            kind: self.backend_name().to_owned(),
            url: key.uri(),
            size_bytes,
            mime_type: mime_type.to_owned(),
            expires_at: None,
        }
    }

    /// Uploads `parts` (each at least the minimum part size but the last) as one object: a
    /// single PUT when there is one part, else a multipart upload that is aborted on failure,
    /// so the object appears whole or not at all.
    async fn upload(
        &self,
        object: &str,
        mime_type: &str,
        parts: impl Stream<Item = std::io::Result<Bytes>> + Send,
    ) -> Result<u64, ArtifactError> {
        let mut parts = Box::pin(parts.peekable());
        let first = parts.next().await.transpose().map_err(stream_err)?;
        let first = first.unwrap_or_default();
        if parts.as_mut().peek().await.is_none() {
            let size = first.len() as u64;
            self.client
                .put_object()
                .bucket(&self.config.bucket)
                .key(object)
                .content_type(mime_type)
                .body(S3Body::from(first))
                .send()
                .await
                .map_err(unavailable)?;
            return Ok(size);
        }
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(object)
            .content_type(mime_type)
            .send()
            .await
            .map_err(unavailable)?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| ArtifactError::Unavailable("S3 returned no upload id".into()))?
            .to_owned();
        let rest = futures::stream::once(async { Ok::<_, std::io::Error>(first) }).chain(parts);
        match self.upload_parts(object, &upload_id, rest).await {
            Ok(size) => Ok(size),
            Err(e) => {
                // Best effort: a failed abort leaves parts that a bucket lifecycle rule
                // (AbortIncompleteMultipartUpload) removes.
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.config.bucket)
                    .key(object)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        object: &str,
        upload_id: &str,
        parts: impl Stream<Item = std::io::Result<Bytes>> + Send,
    ) -> Result<u64, ArtifactError> {
        let mut parts = Box::pin(parts);
        let mut done = Vec::new();
        let mut size = 0u64;
        while let Some(part) = parts.next().await {
            let part = part.map_err(stream_err)?;
            size += part.len() as u64;
            let number = i32::try_from(done.len() + 1)
                .map_err(|_| ArtifactError::Unavailable("too many parts".into()))?;
            let sent = self
                .client
                .upload_part()
                .bucket(&self.config.bucket)
                .key(object)
                .upload_id(upload_id)
                .part_number(number)
                .body(S3Body::from(part))
                .send()
                .await
                .map_err(unavailable)?;
            done.push(
                CompletedPart::builder()
                    .set_e_tag(sent.e_tag().map(str::to_owned))
                    .part_number(number)
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.config.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(unavailable)?;
        Ok(size)
    }
}

pub(super) fn unavailable<E, R>(e: SdkError<E, R>) -> ArtifactError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    ArtifactError::Unavailable(format!("S3: {}", DisplayErrorContext(e)))
}

fn stream_err(e: std::io::Error) -> ArtifactError {
    ArtifactError::Unavailable(format!("reading the artifact body: {e}"))
}

/// Cuts `body` into parts of exactly `size` bytes (the last may be shorter), holding at most
/// one part plus one incoming chunk in memory.
fn parts_of(body: ByteStream, size: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    futures::stream::try_unfold(
        (body, BytesMut::new(), false),
        move |(mut body, mut buf, mut ended)| async move {
            while !ended && buf.len() < size {
                match body.next().await.transpose()? {
                    Some(chunk) => buf.extend_from_slice(&chunk),
                    None => ended = true,
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let part = buf.split_to(buf.len().min(size)).freeze();
            Ok(Some((part, (body, buf, ended))))
        },
    )
}

/// `body` as parts of `size` bytes: slices of the same buffer, nothing copied.
fn slices_of(body: Bytes, size: usize) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    let size = size.max(1);
    let parts: Vec<Bytes> = (0..body.len())
        .step_by(size)
        .map(|at| body.slice(at..(at + size).min(body.len())))
        .collect();
    futures::stream::iter(parts.into_iter().map(Ok))
}

#[async_trait]
impl ArtifactStore for S3ArtifactStore {
    fn backend_name(&self) -> &'static str {
        "s3"
    }

    async fn put(
        &self,
        key: &ArtifactKey,
        body: Bytes,
        mime_type: &str,
    ) -> Result<Artifact, ArtifactError> {
        let object = self.object_key(&key.uri())?;
        let size = self
            .upload(&object, mime_type, slices_of(body, self.config.part_size))
            .await?;
        Ok(self.artifact(key, size, mime_type))
    }

    async fn put_stream(
        &self,
        key: &ArtifactKey,
        body: ByteStream,
        mime_type: &str,
    ) -> Result<Artifact, ArtifactError> {
        let object = self.object_key(&key.uri())?;
        let size = self
            .upload(&object, mime_type, parts_of(body, self.config.part_size))
            .await?;
        Ok(self.artifact(key, size, mime_type))
    }

    async fn get(&self, uri: &str) -> Result<Bytes, ArtifactError> {
        let object = self.object_key(uri)?;
        let got = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| match e {
                SdkError::ServiceError(s) if s.err().is_no_such_key() => {
                    ArtifactError::NotFound(uri.to_owned())
                }
                e => unavailable(e),
            })?;
        let body = got
            .body
            .collect()
            .await
            .map_err(|e| ArtifactError::Unavailable(format!("S3: reading {uri}: {e}")))?;
        Ok(body.into_bytes())
    }

    /// A redirect to a presigned GET URL, after checking the object exists (so a missing
    /// output is our 404, not the store's XML error behind a redirect).
    async fn open(&self, uri: &str) -> Result<Download, ArtifactError> {
        let object = self.object_key(uri)?;
        self.client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| match e {
                SdkError::ServiceError(s) if s.err().is_not_found() => {
                    ArtifactError::NotFound(uri.to_owned())
                }
                e => unavailable(e),
            })?;
        let presigned = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&object)
            .presigned(presigning(self.config.presign_expiry)?)
            .await
            .map_err(unavailable)?;
        Ok(Download::Redirect(presigned.uri().to_owned()))
    }

    /// Deletes the objects under `<prefix><job>/`, batched.
    async fn delete_job(&self, job: &JobId) -> Result<(), ArtifactError> {
        let prefix = self.config.object_key(&format!("{}/", job_folder(job)?));
        super::delete::delete_prefix(&self.client, &self.config.bucket, &prefix).await
    }
}

fn presigning(valid_for: Duration) -> Result<PresigningConfig, ArtifactError> {
    PresigningConfig::expires_in(valid_for)
        .map_err(|e| ArtifactError::Unavailable(format!("presigning: {e}")))
}

#[async_trait]
impl UploadSigner for S3ArtifactStore {
    async fn presign_put(
        &self,
        key: &ArtifactKey,
        mime_type: &str,
        task_timeout: Duration,
    ) -> Result<UploadUrl, ArtifactError> {
        let uri = key.uri();
        let object = self.object_key(&uri)?;
        // Valid for the whole run of the task plus the usual margin, within S3's 7 days.
        let valid_for =
            (task_timeout + self.config.presign_expiry).min(Duration::from_secs(7 * 24 * 3600));
        let presigned = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&object)
            .content_type(mime_type)
            .presigned(presigning(valid_for)?)
            .await
            .map_err(unavailable)?;
        let headers: BTreeMap<String, String> = presigned
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(UploadUrl {
            url: presigned.uri().to_owned(),
            uri,
            kind: self.backend_name().to_owned(),
            headers,
            expires_at: time::OffsetDateTime::now_utc() + valid_for,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts are exactly the part size but the last, whatever the incoming chunks.
    #[tokio::test]
    async fn bodies_are_cut_into_parts_of_the_part_size() {
        let chunks: Vec<std::io::Result<Bytes>> =
            (0..7).map(|i| Ok(Bytes::from(vec![i as u8; 3]))).collect();
        let body: ByteStream = futures::stream::iter(chunks).boxed();
        let parts: Vec<Bytes> = parts_of(body, 5).map(|p| p.unwrap()).collect().await;
        let lens: Vec<usize> = parts.iter().map(Bytes::len).collect();
        assert_eq!(lens, [5, 5, 5, 5, 1]);
        let sliced: Vec<Bytes> = slices_of(Bytes::from(vec![0u8; 11]), 5)
            .map(|p| p.unwrap())
            .collect()
            .await;
        assert_eq!(sliced.iter().map(Bytes::len).collect::<Vec<_>>(), [5, 5, 1]);
        let none: Vec<_> = slices_of(Bytes::new(), 5).collect().await;
        assert!(none.is_empty());
    }
}
