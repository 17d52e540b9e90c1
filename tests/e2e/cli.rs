//! The `splai` client commands against a running server.

use serde_json::Value;
use splai_e2e::SplaiServer;

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// submit, status, tasks, jobs, cancel and retry print the API's JSON and exit non-zero on
/// API errors.
#[test]
fn client_commands_drive_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = SplaiServer::start(&dir.path().join("splai.db"), &[]);

    let (ok, out) = server.cli(&[
        "submit",
        "--type",
        "batch_analysis",
        "--input",
        "hello",
        "--priority",
        "batch",
    ]);
    assert!(ok, "{out}");
    let job = json(&out)["job_id"].as_str().unwrap().to_owned();

    let (ok, out) = server.cli(&["status", &job]);
    assert!(ok);
    assert_eq!(json(&out)["priority"], "batch");
    let (ok, out) = server.cli(&["tasks", &job, "--status", "Queued"]);
    assert!(ok);
    assert!(json(&out)["total"].as_u64().unwrap() >= 1, "{out}");
    let (ok, out) = server.cli(&["jobs", "--type", "batch_analysis"]);
    assert!(ok);
    assert_eq!(json(&out)["jobs"][0]["job_id"], job.as_str());

    let (ok, out) = server.cli(&["cancel", &job]);
    assert!(ok, "{out}");
    let (ok, out) = server.cli(&["watch", &job]);
    assert!(ok);
    assert!(
        out.lines().next().unwrap().starts_with("job.snapshot "),
        "{out}"
    );
    assert!(
        out.lines().last().unwrap().starts_with("job.canceled "),
        "{out}"
    );
    let (ok, _) = server.cli(&["retry", &job]);
    assert!(ok);
    let (ok, out) = server.cli(&["status", &job]);
    assert!(ok);
    assert_eq!(json(&out)["status"], "Queued");

    let (ok, out) = server.cli(&["status", "job-missing"]);
    assert!(!ok, "a 404 makes the command fail");
    assert_eq!(json(&out)["error"]["code"], "not_found");
}

/// An unknown backend name stops `splai serve` at start-up with the supported values listed.
#[test]
fn unknown_backend_fails_start_up_listing_supported_values() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value, supported) in [
        ("SPLAI_STORE", "mongo", "sqlite, postgres, memory"),
        ("SPLAI_QUEUE", "kafka", "store, redis, sqs, memory"),
    ] {
        let out = std::process::Command::new(splai_e2e::binary("splai"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("SPLAI_SQLITE_PATH", dir.path().join("splai.db"))
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} must not start");
        assert!(stderr.contains(supported), "{var}: {stderr}");
    }
}

/// `SPLAI_STORE=postgres` without a DSN, or with one nobody answers at, stops start-up naming
/// `SPLAI_POSTGRES_DSN`.
#[test]
fn postgres_store_fails_start_up_naming_its_dsn() {
    for dsn in [None, Some("postgres://postgres@127.0.0.1:1/splai")] {
        let mut cmd = std::process::Command::new(splai_e2e::binary("splai"));
        cmd.args(["migrate"]).env("SPLAI_STORE", "postgres");
        match dsn {
            Some(d) => cmd.env("SPLAI_POSTGRES_DSN", d),
            None => cmd.env_remove("SPLAI_POSTGRES_DSN"),
        };
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{dsn:?} must not start");
        assert!(stderr.contains("SPLAI_POSTGRES_DSN"), "{dsn:?}: {stderr}");
    }
}

/// `splai submit` with a JSON-lines file sends every line through the bulk API and prints one
/// result per line, failing when any job was rejected.
#[test]
fn submit_of_a_jsonl_file_reports_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = SplaiServer::start(&dir.path().join("splai.db"), &[]);
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"type\":\"chat\",\"input\":\"one\"}\n\n{\"type\":\"chat\",\"input\":\"two\",\"idempotency_key\":\"k\"}\n{\"input\":\"no type\"}\n",
    )
    .unwrap();
    let (ok, out) = server.cli(&["submit", "--file", file.to_str().unwrap()]);
    assert!(!ok, "a rejected line makes the command fail: {out}");
    let lines: Vec<Value> = out.lines().map(json).collect();
    let statuses: Vec<&str> = lines
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["accepted", "accepted", "rejected"]);
    assert_eq!(
        lines
            .iter()
            .map(|l| l["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 3, 4],
        "numbered as in the file"
    );
    let (ok, out) = server.cli(&["jobs", "--type", "chat"]);
    assert!(ok);
    assert_eq!(json(&out)["jobs"].as_array().unwrap().len(), 2);
}

/// `splai bench` runs end to end on a small load: its own server and worker processes, the
/// queued-then-drained phase, the overlapped bulk phase and the single-job phase, and prints
/// every figure.
#[test]
fn bench_runs_end_to_end_on_a_small_load() {
    // Both binaries must sit side by side, as `cargo build --bins` leaves them.
    splai_e2e::binary("splai-worker");
    let out = std::process::Command::new(splai_e2e::binary("splai"))
        .args([
            "bench",
            "--tasks",
            "300",
            "--workers",
            "2",
            "--batch",
            "100",
            "--trickle",
            "3",
        ])
        .env_remove("SPLAI_SQLITE_PATH")
        .output()
        .expect("run splai bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for figure in [
        "300 jobs accepted",
        "300 tasks completed",
        "after the workers were started",
        "after the first submit",
        "us/task in the server",
        "submit->start",
        "submit->done",
        "3 single jobs",
        "submit->executor start",
    ] {
        assert!(text.contains(figure), "missing `{figure}` in:\n{text}");
    }
}

/// `splai dev` alone runs a chat job end to end: its in-process worker answers with the echo
/// backend when no model server is configured, and says so in the output.
#[tokio::test]
async fn dev_runs_a_chat_job_with_the_echo_backend() {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let dev = SplaiServer::start_dev(
        &dir.path().join("splai.db"),
        &[("SPLAI_ARTIFACT_ROOT", artifacts.to_str().unwrap())],
    );
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "type": "chat", "input": "Hello, SPLAI" });
    let resp: Value = http
        .post(format!("{}/v1/jobs", dev.base))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = resp["job_id"].as_str().unwrap().to_owned();
    let mut status = Value::Null;
    for _ in 0..1000 {
        let j: Value = http
            .get(format!("{}/v1/jobs/{job}", dev.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = j["status"].clone();
        if status == "Completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status, "Completed");
    let out: Value = http
        .get(format!("{}/v1/jobs/{job}/tasks/generate/output", dev.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["text"], "[echo] Hello, SPLAI");
    assert_eq!(
        (out["backend"].as_str(), out["echo"].as_bool()),
        (Some("echo"), Some(true))
    );
    assert_eq!(out["_splai"]["worker_id"], "dev-worker");
}
