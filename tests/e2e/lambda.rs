//! The serverless deployment under the Lambda runtime emulator (`cargo lambda watch`): the
//! gateway, admin and policy functions on the AWS emulator's DynamoDB, SQS and S3 serve a
//! real worker; with no server loop anywhere, the sweeper function requeues an expired lease
//! when invoked, once however many copies run.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use splai_e2e::lambda::LambdaWatch;
use splai_e2e::worker::SplaiWorker;
use splai_shared::testing::aws::{SerialMoto, TestAws};
use splai_shared::testing::postgres::TestDb;
use splai_shared::testing::services::{Service, locate};

use crate::{Api, JOB_LIMIT};

/// A job the echo worker runs, and one nobody can (no worker offers vLLM).
fn echo_job(input: &str) -> Value {
    json!({"type": "chat", "input": input, "tasks": [{
        "task_id": "generate", "type": "llm_inference",
        "inputs": {"prompt": input}, "constraints": {"backend": "echo"},
    }]})
}

/// A job submitted through the gateway function is run by a real worker (which uploads its
/// output through a presigned URL, with no AWS settings of its own); the client reads the
/// job and the output (through the redirect) from the gateway function, the dead letters and
/// metrics from the admin function, the policy from the policy function; an event stream is
/// the snapshot a client polls.
#[tokio::test]
async fn functions_serve_a_worker_on_dynamodb_sqs_and_s3() {
    let Some(endpoint) = locate(Service::Aws, "lambda_functions") else {
        return;
    };
    // Four gateway instances write jobs at once: DynamoDB needs atomic conditional writes.
    let Some(dynamodb) = SerialMoto::start("lambda_functions").await else {
        return;
    };
    let names = TestAws::unique("splai-lambda");
    let env = [
        ("SPLAI_STORE", "dynamodb"),
        ("SPLAI_QUEUE", "sqs"),
        ("SPLAI_ARTIFACT_BACKEND", "s3"),
        ("SPLAI_ARTIFACT_UPLOAD", "presigned"),
        ("SPLAI_MAX_INLINE_OUTPUT_BYTES", "0"),
        ("SPLAI_AWS_CREATE_RESOURCES", "true"),
        ("SPLAI_DYNAMODB_TABLE", names.as_str()),
        ("SPLAI_SQS_QUEUE_PREFIX", names.as_str()),
        ("SPLAI_S3_BUCKET", names.as_str()),
        ("SPLAI_S3_FORCE_PATH_STYLE", "true"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let Some(watch) = LambdaWatch::start("lambda_functions", &env, 4).await else {
        return;
    };
    let gateway = watch.url("gateway");
    let worker =
        SplaiWorker::start(&gateway, "w-lambda", &[("SPLAI_WORKER_BACKENDS", "echo")]).await;
    let api = Api::new(&gateway);

    let job = api.submit(echo_job("through a function")).await;
    let done = api.finished(&job, JOB_LIMIT).await;
    assert_eq!(
        done["status"],
        "Completed",
        "{done}\n{}\n{}",
        worker.log(),
        watch.log()
    );
    let out: Value = reqwest::get(format!("{gateway}/v1/jobs/{job}/tasks/generate/output"))
        .await
        .expect("GET output, following the redirect to S3")
        .json()
        .await
        .expect("the output is JSON");
    assert_eq!(out["_splai"]["worker_id"], "w-lambda", "{out}");

    let admin = watch.url("admin");
    let dead: Value = get_json(&format!("{admin}/v1/admin/queue/dead-letter")).await;
    assert_eq!(dead["tasks"], json!([]), "{dead}");
    let metrics: Value = get_json(&format!("{admin}/v1/metrics")).await;
    assert_eq!(metrics["queue_backend"], "sqs", "{metrics}");
    let workers = &metrics["metrics"]["workers"]["series"];
    assert!(
        workers.as_array().is_some_and(|s| s
            .iter()
            .any(|w| w["labels"]["health"] == "healthy" && w["value"] == 1)),
        "the admin function reads the workers the gateway function registered: {workers}"
    );
    let policy: Value = get_json(&format!("{}/v1/policy", watch.url("policy"))).await;
    assert!(policy.is_object(), "{policy}");

    // A job nobody runs: its event stream is the snapshot with a retry hint, and it ends.
    let waiting = api
        .submit(json!({"type": "chat", "tasks": [{
            "task_id": "generate", "type": "llm_inference",
            "inputs": {"prompt": "nobody"}, "constraints": {"backend": "vllm"},
        }]}))
        .await;
    let stream = reqwest::get(format!("{gateway}/v1/jobs/{waiting}/stream"))
        .await
        .expect("GET stream")
        .text()
        .await
        .expect("the stream ends");
    assert!(stream.contains("event: job.snapshot"), "{stream}");
    assert!(stream.contains("retry: 1000"), "{stream}");
    assert!(!stream.contains("job.completed"), "{stream}");
}

/// With no server loop running (every process is a function), a lease whose worker vanished
/// stays taken until the sweeper function is invoked; two invocations at once requeue it
/// once, and it is claimed again as attempt 2. Long polls are cut to the Lambda cap.
#[tokio::test]
async fn sweeper_function_requeues_an_expired_lease_once() {
    let Some(db) = TestDb::create("lambda_sweeper").await else {
        return;
    };
    let artifacts = tempfile::tempdir().expect("a temporary directory");
    let env = [
        ("SPLAI_STORE", "postgres"),
        ("SPLAI_QUEUE", "store"),
        ("SPLAI_POSTGRES_DSN", db.url()),
        (
            "SPLAI_ARTIFACT_ROOT",
            artifacts.path().to_str().expect("UTF-8"),
        ),
        ("SPLAI_LEASE_SECONDS", "2"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ];
    let Some(watch) = LambdaWatch::start("lambda_sweeper", &env, 2).await else {
        return;
    };
    let gateway = watch.url("gateway");
    let http = reqwest::Client::new();
    let registered = http
        .post(format!("{gateway}/v1/workers/register"))
        .json(&json!({"worker_id": "w-vanished", "cpu": 2, "backends": ["echo"]}))
        .send()
        .await
        .expect("register");
    assert!(registered.status().is_success(), "{}", registered.status());
    let claim = |wait: u64| {
        let url =
            format!("{gateway}/v1/workers/w-vanished/assignments?max_tasks=5&wait_seconds={wait}");
        let http = http.clone();
        async move {
            let answer: Value = http
                .get(url)
                .send()
                .await
                .expect("claim")
                .json()
                .await
                .expect("JSON");
            answer["assignments"]
                .as_array()
                .expect("assignments")
                .clone()
        }
    };

    let job = Api::new(&gateway).submit(echo_job("abandoned")).await;
    let first = claim(5).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0]["job_id"].as_str(), first[0]["attempt"].as_u64()),
        (Some(job.as_str()), Some(1))
    );

    // The worker vanished; its lease runs out, and nothing but a sweep would requeue it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(claim(0).await.is_empty(), "no loop requeued it");

    let (a, b) = tokio::join!(watch.invoke("sweeper", "{}"), watch.invoke("sweeper", "{}"));
    let requeued = |o: &Value| o["requeued"].as_u64().unwrap_or(0);
    assert_eq!(requeued(&a) + requeued(&b), 1, "{a} {b}");
    let again = claim(5).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["attempt"], 2);

    // Nothing left to claim: the long poll asked for 25 s and is cut to the Lambda cap.
    let started = Instant::now();
    assert!(claim(25).await.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(19) && waited < Duration::from_secs(24),
        "{waited:?}"
    );
}

async fn get_json(url: &str) -> Value {
    let resp = reqwest::get(url).await.expect("GET");
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    resp.json().await.expect("JSON")
}
