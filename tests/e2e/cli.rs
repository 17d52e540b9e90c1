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
        ("SPLAI_STORE", "mongo", "sqlite, memory"),
        ("SPLAI_QUEUE", "kafka", "store, memory"),
    ] {
        let out = std::process::Command::new(splai_e2e::binary("splai-functions", "splai"))
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
