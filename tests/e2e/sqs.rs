//! `SPLAI_QUEUE=sqs` under the real server and workers, against the AWS emulator: the queues
//! are created at start-up, and a worker killed mid-task loses no work.

use std::time::Duration;

use serde_json::{Value, json};
use splai_e2e::model_server::ModelServer;
use splai_shared::testing::aws::{SerialMoto, TestAws};
use splai_shared::testing::services::{Service, locate};

use crate::{Fabric, JOB_LIMIT, all_complete_nothing_dead, ollama, submit_batch};

/// The server's environment for SQS queues of `prefix` on the emulator at `endpoint`.
fn sqs_env<'a>(endpoint: &'a str, prefix: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("SPLAI_QUEUE", "sqs"),
        ("SPLAI_SQS_QUEUE_PREFIX", prefix),
        ("SPLAI_AWS_CREATE_RESOURCES", "true"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
}

/// A server on `env` and two echo workers: 100 jobs, one worker killed after the first 60
/// were submitted; every job completes, is counted once, and nothing is dead-lettered.
async fn survive_a_killed_worker(env: &[(&str, &str)]) {
    let mut env = env.to_vec();
    env.extend([
        // Short leases: the killed worker's tasks come back soon.
        ("SPLAI_LEASE_SECONDS", "2"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
        ("SPLAI_SWEEP_INTERVAL_MS", "200"),
    ]);
    let fabric = Fabric::start(&env);
    let echo = [
        ("SPLAI_WORKER_BACKENDS", "echo"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ];
    let doomed = fabric.worker("w-doomed", &echo).await;
    let _survivor = fabric.worker("w-survivor", &echo).await;
    let mut jobs = submit_batch(&fabric.server.base, 60).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(doomed);
    jobs.extend(submit_batch(&fabric.server.base, 40).await);
    all_complete_nothing_dead(&fabric, &jobs).await;
}

/// Jobs run end to end through SQS (configured only by the standard AWS variables and
/// `SPLAI_SQS_QUEUE_PREFIX`), including the tasks of a worker killed mid-run, whose leases
/// run out and are delivered again to the other worker; nothing is dead-lettered.
#[tokio::test]
async fn sqs_queue_runs_jobs_and_survives_a_killed_worker() {
    let Some(endpoint) = locate(Service::Aws, "sqs_queue_runs_jobs") else {
        return;
    };
    let prefix = TestAws::unique("splai-e2e");
    let env = sqs_env(&endpoint, &prefix);
    survive_a_killed_worker(&env).await;
}

/// The all-AWS state and queue: jobs submitted through the gateway run on DynamoDB and SQS,
/// including the tasks of a worker killed mid-run; each job completes and is counted once.
///
/// DynamoDB is a serial emulator of the test's own (through the standard
/// `AWS_ENDPOINT_URL_DYNAMODB`): the shared one applies concurrent conditional writes without
/// a lock, so two writers of one job can both succeed there, which DynamoDB never allows.
#[tokio::test]
async fn dynamodb_and_sqs_run_jobs_and_survive_a_killed_worker() {
    let Some(endpoint) = locate(Service::Aws, "dynamodb_and_sqs_run_jobs") else {
        return;
    };
    let Some(dynamodb) = SerialMoto::start("dynamodb_and_sqs_run_jobs").await else {
        return;
    };
    let prefix = TestAws::unique("splai-e2e");
    let mut env = sqs_env(&endpoint, &prefix);
    env.extend([
        ("SPLAI_STORE", "dynamodb"),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb.endpoint.as_str()),
        ("SPLAI_DYNAMODB_TABLE", prefix.as_str()),
    ]);
    survive_a_killed_worker(&env).await;
}

/// A task failing its only attempt reaches the SQS dead-letter queue and fails its job; the
/// admin API lists it and requeues it, and the revived job completes on the worker.
#[tokio::test]
async fn sqs_dead_letter_is_listed_and_requeued_through_the_admin_api() {
    let Some(endpoint) = locate(Service::Aws, "sqs_dead_letter_admin_api") else {
        return;
    };
    let prefix = TestAws::unique("splai-e2e");
    let double = ModelServer::start().await;
    double.fail_next("/api/generate", 500, r#"{"error":"runner crashed"}"#, 1);
    let fabric = Fabric::start(&sqs_env(&endpoint, &prefix));
    let mut worker_env = ollama(&double).to_vec();
    worker_env.push(("SPLAI_MODEL_HTTP_RETRIES", "0"));
    let _worker = fabric.worker("w-sqs-dead", &worker_env).await;

    let job = fabric
        .api
        .submit(json!({"type": "chat", "tasks": [{
            "task_id": "generate",
            "type": "llm_inference",
            "inputs": {"prompt": "again"},
            "max_retries": 0,
        }]}))
        .await;
    let failed = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(failed["status"], "Failed", "{failed}");

    let http = reqwest::Client::new();
    let url = format!("{}/v1/admin/queue/dead-letter", fabric.server.base);
    let list = |http: reqwest::Client, url: String| async move {
        let resp = http
            .get(format!("{url}?limit=10"))
            .send()
            .await
            .expect("GET");
        assert!(resp.status().is_success(), "{}", resp.status());
        resp.json::<Value>().await.expect("JSON")
    };
    // The dead letter is sent right after the failure commits.
    crate::eventually_within(JOB_LIMIT, "the dead letter is listed", || {
        let listing = list(http.clone(), url.clone());
        async move { !listing.await["tasks"].as_array().expect("tasks").is_empty() }
    })
    .await;
    let listed = list(http.clone(), url.clone()).await;
    let tasks = listed["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 1, "{listed}");
    assert_eq!(
        (tasks[0]["job_id"].as_str(), tasks[0]["task_id"].as_str()),
        (Some(job.as_str()), Some("generate")),
        "{listed}"
    );

    let resp = http
        .post(&url)
        .json(&json!({"tasks": [{"job_id": job, "task_id": "generate"}]}))
        .send()
        .await
        .expect("POST");
    assert!(resp.status().is_success(), "{}", resp.status());
    let answer: Value = resp.json().await.expect("JSON");
    assert_eq!(answer["requeued"], 1, "{answer}");

    let done = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");
    assert_eq!(
        fabric.api.output(&job, "generate").await["text"],
        "double: again"
    );
    let listed = list(http, url).await;
    assert_eq!(listed["tasks"], json!([]), "{listed}");
}
