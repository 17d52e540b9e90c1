//! Auth on: a real `splai-worker` authenticates with `SPLAI_API_TOKEN` and completes a
//! tenant's job; bad auth variables stop `splai serve` at start-up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use splai_e2e::binary;

use crate::{Api, Fabric, JOB_LIMIT};

const CLIENT: &str = "e2e-client-7c1d";
const WORKER: &str = "e2e-worker-93fa";

#[tokio::test]
async fn a_worker_with_its_token_completes_a_job_with_auth_on() {
    let tokens = format!("{CLIENT}:tenant:acme|job:submit|job:read,{WORKER}:task:report");
    let fabric = Fabric::start(&[("SPLAI_API_TOKENS", &tokens)]);
    let base = fabric.server.base.clone();

    // Without a token nothing but health answers.
    let anonymous = reqwest::get(format!("{base}/v1/jobs")).await.expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let health = reqwest::get(format!("{base}/healthz")).await.expect("GET");
    assert_eq!(health.status(), StatusCode::OK);

    let worker = fabric
        .worker(
            "w-auth",
            &[
                ("SPLAI_API_TOKEN", WORKER),
                ("SPLAI_WORKER_BACKENDS", "echo"),
            ],
        )
        .await;
    let api = Api::with_token(&base, CLIENT);
    let job = api
        .submit(json!({
            "type": "chat",
            "tenant": "acme",
            "tasks": [{ "task_id": "say", "type": "llm_inference",
                        "inputs": { "prompt": "hello" }, "constraints": { "backend": "echo" } }],
        }))
        .await;
    let done = api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");
    assert_eq!(done["tenant"], "acme", "{done}");
    let out = api.output(&job, "say").await;
    assert_eq!(out["_splai"]["worker_id"], "w-auth", "{out}");
    assert!(
        !worker.log().contains(WORKER),
        "the worker logged its token:\n{}",
        worker.log()
    );
}

#[test]
fn invalid_auth_variables_stop_the_server_at_start_up() {
    let mut child = Command::new(binary("splai"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SPLAI_STORE", "memory")
        .env("SPLAI_QUEUE", "memory")
        .env("SPLAI_API_TOKENS", "e2e-secret-tok:job:read")
        .env("SPLAI_API_TOKEN_ROLES", "e2e-secret-tok=nobody")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn splai");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("splai started with an invalid SPLAI_API_TOKEN_ROLES");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success());
    assert!(stderr.contains("SPLAI_API_TOKEN_ROLES"), "{stderr}");
    assert!(!stderr.contains("e2e-secret-tok"), "{stderr}");
}
