//! The artifact contract on every store (local files, S3 on the emulator), and what only S3
//! does: presigned uploads and downloads over plain HTTP, multipart uploads, start-up checks.

use std::sync::Arc;

use splai_shared::artifacts::local::LocalArtifactStore;
use splai_shared::testing::artifacts::ArtifactCase;

async fn local() -> Option<ArtifactCase> {
    let dir = tempfile::tempdir().expect("temp dir");
    Some(ArtifactCase {
        store: Arc::new(LocalArtifactStore::new(dir.path())),
        keep: Some(Box::new(dir)),
    })
}

mod local_files {
    splai_shared::artifact_suite!(super::local);
}

#[cfg(feature = "aws")]
mod s3 {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use splai_shared::artifacts::s3::{MIN_PART_SIZE, S3ArtifactStore, S3Config, S3SetupError};
    use splai_shared::artifacts::{ArtifactKey, ArtifactStore, ByteStream, UploadSigner};
    use splai_shared::domain::{JobId, TaskId};
    use splai_shared::testing::artifacts::ArtifactCase;
    use splai_shared::testing::aws::TestAws;

    /// A store on a bucket of the test's own (created), with the smallest part size S3 allows.
    async fn store(test: &str) -> Option<(S3ArtifactStore, TestAws, S3Config)> {
        let aws = TestAws::find(test).await?;
        let config = S3Config {
            bucket: TestAws::unique("artifacts"),
            prefix: "runs".into(),
            force_path_style: true,
            create_bucket: true,
            part_size: MIN_PART_SIZE,
            ..S3Config::default()
        };
        let store = S3ArtifactStore::connect(&aws.sdk, config.clone())
            .await
            .expect("connect to the emulator");
        Some((store, aws, config))
    }

    async fn s3_case() -> Option<ArtifactCase> {
        let (store, ..) = store("artifact suite on s3").await?;
        Some(ArtifactCase {
            store: Arc::new(store),
            keep: None,
        })
    }

    mod suite {
        splai_shared::artifact_suite!(super::s3_case);
    }

    fn output_key() -> ArtifactKey {
        ArtifactKey::output(
            JobId::parse("job-up").expect("job id"),
            TaskId::parse("t1").expect("task id"),
        )
    }

    /// A raw client on the emulator, to look at objects the way S3 holds them.
    fn raw(aws: &TestAws) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&aws.sdk)
                .force_path_style(true)
                .build(),
        )
    }

    /// Multipart uploads started in `bucket` and neither completed nor aborted.
    async fn open_uploads(aws: &TestAws, bucket: &str) -> usize {
        raw(aws)
            .list_multipart_uploads()
            .bucket(bucket)
            .send()
            .await
            .expect("list uploads")
            .uploads()
            .len()
    }

    /// A presigned PUT URL takes the output from a plain HTTP client with no credentials; the
    /// store then reads it, and its presigned GET redirect serves it with its type.
    #[tokio::test]
    async fn presigned_put_and_get_round_trip_over_plain_http() {
        let Some((store, ..)) = store("presigned_put_and_get_round_trip_over_plain_http").await
        else {
            return;
        };
        let up = store
            .presign_put(&output_key(), "application/json", Duration::from_secs(60))
            .await
            .expect("presign");
        assert_eq!(up.uri, "artifact://job-up/t1/output.json");
        assert_eq!(up.kind, "s3");
        assert!(up.expires_at > time::OffsetDateTime::now_utc() + Duration::from_secs(900));
        let http = reqwest::Client::new();
        let mut put = http.put(&up.url).body(r#"{"answer":42}"#);
        for (k, v) in &up.headers {
            put = put.header(k, v);
        }
        let resp = put.send().await.expect("PUT");
        assert!(resp.status().is_success(), "{}", resp.status());

        assert_eq!(
            &store.get(&up.uri).await.expect("get")[..],
            br#"{"answer":42}"#
        );
        let splai_shared::artifacts::Download::Redirect(url) =
            store.open(&up.uri).await.expect("open")
        else {
            panic!("S3 downloads are redirects");
        };
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        let resp = reqwest::get(&url).await.expect("GET");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        assert_eq!(&resp.bytes().await.expect("body")[..], br#"{"answer":42}"#);
    }

    /// Outputs above the part size go up as multipart uploads (S3's ETag of a multipart
    /// object ends in `-<parts>`), streamed or from one buffer, under the key prefix.
    #[tokio::test]
    async fn large_outputs_are_uploaded_in_parts() {
        let Some((store, aws, config)) = store("large_outputs_are_uploaded_in_parts").await else {
            return;
        };
        let total = 2 * MIN_PART_SIZE + 1234;
        let chunks: Vec<std::io::Result<Bytes>> = (0..total.div_ceil(65_536))
            .map(|i| {
                let len = 65_536.min(total - i * 65_536);
                Ok(Bytes::from(vec![(i % 251) as u8; len]))
            })
            .collect();
        let body: ByteStream = futures::stream::iter(chunks).boxed();
        let key = ArtifactKey::output(
            JobId::parse("job-big").expect("job id"),
            TaskId::parse("t1").expect("task id"),
        );
        let a = store
            .put_stream(&key, body, "application/json")
            .await
            .expect("streamed put");
        assert_eq!(a.size_bytes, total as u64);
        let got = store.get(&a.url).await.expect("get");
        assert_eq!(got.len(), total);
        assert!(got[65_536..131_072].iter().all(|b| *b == 1));

        let raw = raw(&aws);
        let head = raw
            .head_object()
            .bucket(&config.bucket)
            .key("runs/job-big/t1/output.json")
            .send()
            .await
            .expect("object under the prefix");
        assert!(
            head.e_tag().unwrap_or_default().ends_with("-3\""),
            "{head:?}"
        );

        let one = Bytes::from(vec![7u8; total]);
        let a = store
            .put(&key, one.clone(), "application/json")
            .await
            .expect("buffered put");
        assert_eq!(a.size_bytes, total as u64);
        assert_eq!(store.get(&a.url).await.expect("get"), one);
        let head = raw
            .head_object()
            .bucket(&config.bucket)
            .key("runs/job-big/t1/output.json")
            .send()
            .await
            .expect("object");
        assert!(
            head.e_tag().unwrap_or_default().ends_with("-3\""),
            "{head:?}"
        );
        assert_eq!(
            open_uploads(&aws, &config.bucket).await,
            0,
            "no upload left open"
        );
    }

    /// A failed streamed body aborts its multipart upload and leaves no object.
    #[tokio::test]
    async fn a_failing_body_leaves_no_object_and_no_open_upload() {
        let Some((store, aws, config)) =
            store("a_failing_body_leaves_no_object_and_no_open_upload").await
        else {
            return;
        };
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from(vec![1u8; MIN_PART_SIZE + 10])),
            Err(std::io::Error::other("producer died")),
        ];
        let body: ByteStream = futures::stream::iter(chunks).boxed();
        let e = store
            .put_stream(&output_key(), body, "application/json")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("producer died"), "{e}");
        assert!(store.get(&output_key().uri()).await.is_err());
        assert_eq!(
            open_uploads(&aws, &config.bucket).await,
            0,
            "the upload was aborted"
        );
    }

    /// Start-up fails naming what to fix: a missing bucket (unless it may be created), an
    /// endpoint that does not answer, no region.
    #[tokio::test]
    async fn bad_s3_settings_fail_start_up_naming_the_variable() {
        let Some(aws) = TestAws::find("bad_s3_settings_fail_start_up_naming_the_variable").await
        else {
            return;
        };
        let missing = S3Config {
            bucket: TestAws::unique("absent"),
            force_path_style: true,
            ..S3Config::default()
        };
        let e = S3ArtifactStore::connect(&aws.sdk, missing)
            .await
            .unwrap_err();
        assert!(matches!(e, S3SetupError::NoBucket(_)), "{e}");
        assert!(e.to_string().contains("SPLAI_AWS_CREATE_RESOURCES"), "{e}");

        let unreachable = S3Config {
            endpoint: Some("http://127.0.0.1:9".into()),
            force_path_style: true,
            ..S3Config::default()
        };
        let e = S3ArtifactStore::connect(&aws.sdk, unreachable)
            .await
            .unwrap_err();
        assert!(matches!(e, S3SetupError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("SPLAI_S3_ENDPOINT"), "{e}");

        let no_region = aws_config::SdkConfig::builder()
            .behavior_version(splai_shared::aws::behavior_version())
            .build();
        let e = S3ArtifactStore::connect(&no_region, S3Config::default())
            .await
            .unwrap_err();
        assert_eq!(e, S3SetupError::NoRegion);
        assert!(e.to_string().contains("SPLAI_S3_REGION"), "{e}");
    }
}
