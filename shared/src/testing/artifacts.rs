//! The artifact store contract: every backend (local files, S3) runs these cases through
//! [`artifact_suite!`](crate::artifact_suite).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;

use crate::artifacts::{ArtifactError, ArtifactKey, ArtifactStore, ByteStream, Download};
use crate::domain::{JobId, TaskId};

/// A store under test, with whatever keeps it alive (a temp dir).
pub struct ArtifactCase {
    /// The store.
    pub store: Arc<dyn ArtifactStore>,
    /// Dropped with the case.
    pub keep: Option<Box<dyn std::any::Any + Send>>,
}

/// Instantiates every case as a `#[tokio::test]` using `$setup` (an async fn returning
/// `Option<ArtifactCase>`, `None` when the service behind it is missing and the case skipped).
#[macro_export]
macro_rules! artifact_suite {
    ($setup:path) => {
        $crate::artifact_suite!(@cases $setup;
            put_then_get_round_trips_and_replaces,
            missing_and_escaping_artifacts_are_refused,
            open_serves_what_was_put,
            streamed_put_round_trips_its_chunks,
            delete_job_removes_only_that_jobs_artifacts,
        );
    };
    (@cases $setup:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some(case) = $setup().await else {
                    return;
                };
                $crate::testing::artifacts::$case(&*case.store).await;
            }
        )*
    };
}

fn key(name: &str) -> ArtifactKey {
    ArtifactKey::new(
        JobId::parse("job-1").expect("job id"),
        TaskId::parse("t1").expect("task id"),
        name,
    )
    .expect("plain name")
}

/// The bytes behind a download: read from the stream, or fetched from the redirect URL with
/// plain HTTP and no credentials.
pub async fn download(d: Download) -> Bytes {
    match d {
        Download::Bytes { body, .. } => {
            let chunks: Vec<Bytes> = body.map(|c| c.expect("chunk")).collect().await;
            Bytes::from(chunks.concat())
        }
        Download::Redirect(url) => {
            let resp = reqwest::get(&url).await.expect("GET the redirect");
            assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
            resp.bytes().await.expect("body")
        }
    }
}

/// A put is readable at its URI, with backend, size and type recorded; a second put
/// replaces it.
pub async fn put_then_get_round_trips_and_replaces(store: &dyn ArtifactStore) {
    let a = store
        .put(
            &key("output.json"),
            Bytes::from_static(b"{\"a\":1}"),
            "application/json",
        )
        .await
        .expect("put");
    assert_eq!(a.url, "artifact://job-1/t1/output.json");
    assert_eq!((a.kind.as_str(), a.size_bytes), (store.backend_name(), 7));
    assert_eq!(a.mime_type, "application/json");
    store
        .put(
            &key("output.json"),
            Bytes::from_static(b"{}"),
            "application/json",
        )
        .await
        .expect("second put");
    assert_eq!(&store.get(&a.url).await.expect("get")[..], b"{}");
}

/// Missing artifacts are NotFound (to read and to open); names and URIs that could leave the
/// store's space are refused.
pub async fn missing_and_escaping_artifacts_are_refused(store: &dyn ArtifactStore) {
    assert!(matches!(
        store.get("artifact://job-1/t1/none.json").await,
        Err(ArtifactError::NotFound(_))
    ));
    assert!(matches!(
        store.open("artifact://job-1/t1/none.json").await,
        Err(ArtifactError::NotFound(_))
    ));
    for bad in [
        "artifact://job-1/../../etc/passwd",
        "artifact://job-1//x",
        "s3://bucket/key",
    ] {
        assert!(
            matches!(store.get(bad).await, Err(ArtifactError::InvalidUri(_))),
            "{bad}"
        );
    }
    for bad in ["", "..", "a/b"] {
        let k = ArtifactKey::new(
            JobId::parse("job-1").expect("job id"),
            TaskId::parse("t1").expect("task id"),
            bad,
        );
        assert!(k.is_err(), "{bad:?}");
    }
}

/// What `open` hands a client (bytes, or a URL that needs no credentials) is what was put.
pub async fn open_serves_what_was_put(store: &dyn ArtifactStore) {
    let a = store
        .put(
            &key("report.txt"),
            Bytes::from_static(b"hello, artifact"),
            "text/plain",
        )
        .await
        .expect("put");
    let d = store.open(&a.url).await.expect("open");
    assert_eq!(&download(d).await[..], b"hello, artifact");
}

/// A body arriving in chunks is stored whole, its size the sum of the chunks.
pub async fn streamed_put_round_trips_its_chunks(store: &dyn ArtifactStore) {
    let chunks: Vec<std::io::Result<Bytes>> =
        (0..50u8).map(|i| Ok(Bytes::from(vec![i; 1000]))).collect();
    let body: ByteStream = futures::stream::iter(chunks).boxed();
    let a = store
        .put_stream(&key("big.bin"), body, "application/octet-stream")
        .await
        .expect("put_stream");
    assert_eq!(a.size_bytes, 50_000);
    let got = store.get(&a.url).await.expect("get");
    assert_eq!(got.len(), 50_000);
    assert!(got[..1000].iter().all(|b| *b == 0) && got[49_000..].iter().all(|b| *b == 49));
}

/// `delete_job` removes every artifact of the job, of every task, and nothing of another job
/// whose id starts the same; deleting again, or a job with none, is fine.
pub async fn delete_job_removes_only_that_jobs_artifacts(store: &dyn ArtifactStore) {
    // Unique per run: S3 cases share a bucket.
    let job = JobId::generate();
    let neighbour = JobId::parse(format!("{job}-2")).expect("job id");
    let at = |job: &JobId, task: &str| {
        ArtifactKey::output(job.clone(), TaskId::parse(task).expect("task id"))
    };
    let body = || Bytes::from_static(b"{}");
    let mut uris = Vec::new();
    for key in [at(&job, "t1"), at(&job, "t2"), at(&neighbour, "t1")] {
        let a = store
            .put(&key, body(), "application/json")
            .await
            .expect("put");
        uris.push(a.url);
    }

    store.delete_job(&job).await.expect("delete");

    for uri in &uris[..2] {
        assert!(
            matches!(store.get(uri).await, Err(ArtifactError::NotFound(_))),
            "{uri} deleted"
        );
    }
    assert_eq!(store.get(&uris[2]).await.expect("kept"), body());
    store.delete_job(&job).await.expect("deleting again");
    store
        .delete_job(&JobId::generate())
        .await
        .expect("a job with no artifacts");
    store.delete_job(&neighbour).await.expect("clean up");
}
