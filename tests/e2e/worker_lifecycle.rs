//! The worker process under cancellation, SIGKILL, SIGTERM and a gateway outage: no work is
//! lost or run twice, and the worker stops (or keeps going) as it should.

use std::future::ready;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use splai_e2e::model_server::ModelServer;
use splai_e2e::worker::SplaiWorker;
use splai_e2e::{SplaiServer, free_local_addr};

use crate::{Api, Fabric, JOB_LIMIT, eventually_within, ollama};

/// Short leases, for the test where a lease running out is the behaviour under test.
const FAST_LEASES: &[(&str, &str)] = &[
    ("SPLAI_LEASE_SECONDS", "2"),
    ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ("SPLAI_SWEEP_INTERVAL_MS", "100"),
];

/// A model call slower than any test: the double answers it only if the test lets it.
const STALLED: Duration = Duration::from_secs(60);

/// A `tool_execution` task running a shell command.
fn tool(id: &str, command: &str) -> Value {
    json!({"task_id": id, "type": "tool_execution", "inputs": {"command": command}})
}

/// Whether `task` of `job` is running on `worker`.
async fn running_on(api: &Api, job: &str, task: &str, worker: &str) -> bool {
    let t = api.task(job, task).await;
    t["status"] == "Running" && t["worker_id"] == worker
}

/// Canceling a job abandons its running model call; the worker goes on to serve the next job.
#[tokio::test]
async fn cancel_stops_the_running_task_and_the_worker_keeps_serving() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[]);
    // The lease stays at its default; only the worker's heartbeat (which carries the cancel)
    // is shortened, to keep "a few heartbeats" short.
    let [backends, url] = ollama(&double);
    let _worker = fabric
        .worker(
            "w-cancel",
            &[backends, url, ("SPLAI_HEARTBEAT_SECONDS", "1")],
        )
        .await;
    // Only now: the worker's start-up model listing must not stall.
    double.set_delay(Some(STALLED));
    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": "never answered"}))
        .await;
    eventually_within(Duration::from_secs(10), "the model call", || {
        ready(double.requests("/api/generate") == 1)
    })
    .await;

    fabric.api.cancel(&job).await;

    eventually_within(Duration::from_secs(5), "the call is abandoned", || {
        ready(double.dropped() == 1)
    })
    .await;
    double.set_delay(None);
    let next = fabric
        .api
        .submit(json!({"type": "chat", "input": "next"}))
        .await;
    let done = fabric.api.finished(&next, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");
    assert_eq!(
        fabric.api.task(&next, "generate").await["worker_id"],
        "w-cancel"
    );
    let canceled = fabric.api.job(&job).await;
    assert_eq!(canceled["status"], "Canceled", "{canceled}");
    let task = fabric.api.task(&job, "generate").await;
    assert_eq!(task["status"], "Canceled", "{task}");
    assert!(task["output_artifact_uri"].is_null(), "{task}");
    assert_eq!(
        double.requests("/api/generate"),
        2,
        "the canceled task never reran"
    );
}

/// The task of a worker killed mid-run completes on another worker once its lease expires.
#[tokio::test]
async fn task_of_a_killed_worker_completes_on_another_after_lease_expiry() {
    let double = ModelServer::start().await;
    let fabric = Fabric::start(FAST_LEASES);
    let mut first = fabric.worker("w-killed", &ollama(&double)).await;
    double.set_delay(Some(STALLED));
    let job = fabric
        .api
        .submit(json!({"type": "chat", "input": "survive"}))
        .await;
    eventually_within(Duration::from_secs(10), "the model call", || {
        ready(double.requests("/api/generate") == 1)
    })
    .await;
    assert!(running_on(&fabric.api, &job, "generate", "w-killed").await);

    first.kill();
    double.set_delay(None);
    let _second = fabric.worker("w-heir", &ollama(&double)).await;

    let done = fabric.api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");
    let task = fabric.api.task(&job, "generate").await;
    assert_eq!(
        (&task["worker_id"], &task["attempt"]),
        (&json!("w-heir"), &json!(2)),
        "{task}"
    );
    let out = fabric.api.output(&job, "generate").await;
    assert_eq!(
        (&out["_splai"]["worker_id"], &out["_splai"]["attempt"]),
        (&json!("w-heir"), &json!(2)),
        "{out}"
    );
    assert_eq!(out["text"], "double: survive");
}

/// A worker killed outright takes its tool commands with it, children included: nothing it
/// started keeps running unsupervised (where the host has `setpriv` and user namespaces).
#[tokio::test]
async fn killed_worker_leaves_no_tool_process_behind() {
    let isolated = std::process::Command::new("unshare")
        .args(["--net", "--pid", "--kill-child", "--map-root-user", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let tied = std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !(isolated && tied) {
        eprintln!("SKIPPED killed_worker_leaves_no_tool_process_behind: needs setpriv and unshare");
        return;
    }
    let fabric = Fabric::start(&[]);
    let mut worker = fabric.worker("w-doomed", &[]).await;
    let (parent, child) = (crate::unique_sleep_seconds(), crate::unique_sleep_seconds());
    let command = format!("sleep {child} & exec sleep {parent}");
    let job = fabric
        .api
        .submit(json!({"type": "tool", "tasks": [tool("spawner", &command)]}))
        .await;
    eventually_within(Duration::from_secs(10), "both sleeps run", || {
        ready(
            !crate::processes_running(&["sleep", &parent]).is_empty()
                && !crate::processes_running(&["sleep", &child]).is_empty(),
        )
    })
    .await;
    assert!(running_on(&fabric.api, &job, "spawner", "w-doomed").await);

    worker.kill();
    eventually_within(
        Duration::from_secs(5),
        "both sleeps die with the worker",
        || {
            ready(
                crate::processes_running(&["sleep", &parent]).is_empty()
                    && crate::processes_running(&["sleep", &child]).is_empty(),
            )
        },
    )
    .await;
}

/// On SIGTERM a worker finishes its short task, hands the long one back to others, and exits.
#[tokio::test]
async fn sigterm_finishes_short_tasks_and_hands_long_ones_back() {
    // The short task must still run when the signal comes and end well within the grace.
    const GRACE: Duration = Duration::from_secs(4);
    // A lease the test would notice: a hand-back, not an expiry, must move the long task.
    let fabric = Fabric::start(&[("SPLAI_LEASE_SECONDS", "60")]);
    let grace = GRACE.as_secs().to_string();
    let mut leaving = fabric
        .worker("w-leaving", &[("SPLAI_SHUTDOWN_GRACE_SECONDS", &grace)])
        .await;
    let job = fabric
        .api
        .submit(json!({
            "type": "tool",
            "tasks": [tool("short", "sleep 2"), tool("long", "sleep 60")],
        }))
        .await;
    eventually_within(Duration::from_secs(10), "both tasks running", || {
        let (api, job) = (fabric.api.clone(), job.clone());
        async move {
            running_on(&api, &job, "short", "w-leaving").await
                && running_on(&api, &job, "long", "w-leaving").await
        }
    })
    .await;

    let signalled = Instant::now();
    leaving.sigterm();
    // No grace: its own SIGTERM at the end stops the `sleep 60` at once.
    let mut staying = fabric
        .worker("w-staying", &[("SPLAI_SHUTDOWN_GRACE_SECONDS", "0")])
        .await;

    eventually_within(Duration::from_secs(20), "the long task moves", || {
        let (api, job) = (fabric.api.clone(), job.clone());
        async move { running_on(&api, &job, "long", "w-staying").await }
    })
    .await;
    let short = fabric.api.task(&job, "short").await;
    assert_eq!(
        (&short["status"], &short["worker_id"]),
        (&json!("Completed"), &json!("w-leaving")),
        "{short}"
    );
    let long = fabric.api.task(&job, "long").await;
    assert_eq!(long["attempt"], 1, "a hand-back does not count: {long}");
    let left = GRACE + Duration::from_secs(5);
    let status = leaving
        .wait_exit(left.saturating_sub(signalled.elapsed()))
        .await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", leaving.log()));
    assert!(status.success(), "{status}:\n{}", leaving.log());

    staying.sigterm();
    let stopped = staying.wait_exit(Duration::from_secs(10)).await;
    assert!(stopped.is_some(), "{}", staying.log());
}

/// A worker with nothing running exits at once on SIGTERM, cutting its long-poll short.
#[tokio::test]
async fn idle_worker_exits_promptly_on_sigterm() {
    let fabric = Fabric::start(&[]);
    let mut worker = fabric.worker("w-idle", &[]).await;

    worker.sigterm();

    // Well inside both the 20 s long-poll and the 30 s grace period it could wait out.
    let status = worker.wait_exit(Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| panic!("still running:\n{}", worker.log()));
    assert!(status.success(), "{status}:\n{}", worker.log());
}

/// A worker rides out a gateway restart and completes the job submitted after it.
#[tokio::test]
async fn worker_resumes_consuming_after_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("splai.db");
    let artifacts = dir.path().join("artifacts");
    let env = [("SPLAI_ARTIFACT_ROOT", artifacts.to_str().unwrap())];
    // The worker's gateway URL is fixed, so the new gateway must take over the address.
    let addr = free_local_addr();
    let first = SplaiServer::start_on(&db, &addr, &env);
    let base = first.base.clone();
    let worker_env = [env[0], ("SPLAI_WORKER_BACKENDS", "echo")];
    let worker = SplaiWorker::start(&base, "w-outage", &worker_env).await;

    first.kill();
    // Down for at least one heartbeat as well as a claim: both loops must recover.
    eventually_within(
        Duration::from_secs(15),
        "the worker sees the outage",
        || {
            let log = worker.log();
            ready(log.contains("claiming tasks failed") && log.contains("heartbeat failed"))
        },
    )
    .await;
    let second = SplaiServer::start_on(&db, &addr, &env);
    let api = Api::new(&second.base);
    let job = api
        .submit(json!({"type": "chat", "input": "still there?"}))
        .await;

    let done = api.finished(&job, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}\n{}", worker.log());
    assert_eq!(api.task(&job, "generate").await["worker_id"], "w-outage");
    let out = api.output(&job, "generate").await;
    assert_eq!(out["backend"], "echo", "{out}");
}
