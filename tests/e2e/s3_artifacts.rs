//! Outputs on S3 (the emulator): the gateway hands a real `splai-worker` with no AWS
//! credentials a presigned upload URL, and the client downloads through the gateway's redirect.

use serde_json::json;
use splai_e2e::model_server::ModelServer;
use splai_shared::testing::aws::TestAws;

use crate::{Fabric, JOB_LIMIT, ollama};

/// Submit through the gateway (S3 artifacts, presigned uploads); a worker whose environment
/// holds no AWS credentials or endpoint puts the output through its presigned URL; the
/// client follows the gateway's redirect to a presigned GET and gets the bytes.
#[tokio::test]
async fn worker_without_credentials_uploads_through_a_presigned_url() {
    let Some(aws) =
        TestAws::find("worker_without_credentials_uploads_through_a_presigned_url").await
    else {
        return;
    };
    let bucket = TestAws::unique("e2e-artifacts");
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[
        ("SPLAI_ARTIFACT_BACKEND", "s3"),
        ("SPLAI_ARTIFACT_UPLOAD", "presigned"),
        ("SPLAI_S3_BUCKET", bucket.as_str()),
        ("SPLAI_S3_PREFIX", "outputs"),
        ("SPLAI_S3_ENDPOINT", aws.endpoint.as_str()),
        ("SPLAI_S3_FORCE_PATH_STYLE", "true"),
        ("SPLAI_S3_REGION", "us-east-1"),
        ("SPLAI_AWS_CREATE_RESOURCES", "true"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // Every output goes to the artifact store, none inline in the report.
        ("SPLAI_MAX_INLINE_OUTPUT_BYTES", "0"),
    ]);
    // SplaiWorker drops the test's AWS_* and SPLAI_* variables; this gives it none back, and
    // leaves it on the default local artifact backend.
    let worker = fabric.worker("w-s3", &ollama(&double)).await;

    let prompt = "Where do outputs go?";
    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": prompt}))
        .await;
    let done = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}\n{}", worker.log());

    let task = fabric.api.task(&job, "generate").await;
    let artifact = &task["output_artifact"];
    assert_eq!(artifact["type"], "s3", "{task}");
    assert_eq!(
        artifact["url"],
        format!("artifact://{job}/generate/output.json")
    );
    assert_eq!(artifact["mime_type"], "application/json");
    assert!(artifact["size_bytes"].as_u64().unwrap_or(0) > 0, "{task}");
    assert!(
        !fabric
            .artifacts
            .join(format!("{job}/generate/output.json"))
            .exists(),
        "the worker wrote nothing to its own store"
    );

    // The gateway answers with a redirect to a presigned GET on the bucket...
    let url = format!("{}/v1/jobs/{job}/tasks/generate/output", fabric.server.base);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client");
    let resp = no_follow.get(&url).send().await.expect("GET output");
    assert_eq!(resp.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().expect("a URL");
    assert!(
        location.starts_with(&format!(
            "{}/{bucket}/outputs/{job}/generate/output.json?",
            aws.endpoint
        )),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");

    // ...which a client follows to the bytes the worker uploaded.
    let out: serde_json::Value = reqwest::get(&url)
        .await
        .expect("GET output, following the redirect")
        .json()
        .await
        .expect("the output is JSON");
    assert_eq!(out["text"], format!("double: {prompt}"), "{out}");
    assert_eq!(out["_splai"]["worker_id"], "w-s3");
}
