//! `schemathesis` against the served OpenAPI document: property-based requests to every
//! operation of a real server (OpenAI compatibility on, a real worker on the model-server
//! double), checking that nothing answers 5xx and every answer matches the document (status,
//! content type, schema). Skipped with a reason when `schemathesis` is missing, except under
//! CI, where that fails.

use std::process::Command;

use splai_e2e::model_server::ModelServer;

use crate::{Fabric, ollama};

/// Test cases per operation: enough to reach every documented answer, bounded for CI time.
const MAX_EXAMPLES: &str = "12";

#[tokio::test]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let has_schemathesis = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_schemathesis {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but `schemathesis --version` fails: install it (pip install schemathesis)"
        );
        eprintln!(
            "SKIPPED schemathesis: the `schemathesis` command is not installed (pip install schemathesis)"
        );
        return;
    }
    let double = ModelServer::start().await;
    let fabric = Fabric::start(&[
        ("SPLAI_OPENAI_COMPAT", "true"),
        ("SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS", "5"),
        // Long polls end well within schemathesis' 30 s request timeout, whatever
        // `wait_seconds` it asks for (it finds the worker's id through the API's links).
        ("SPLAI_MAX_WAIT_SECONDS", "5"),
    ]);
    let _worker = fabric.worker("w-st", &ollama(&double)).await;
    let schema = format!("{}/openapi.json", fabric.server.base);
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let scratch_dir = scratch.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .args(["run", &schema])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance",
            ])
            .args(["--max-examples", MAX_EXAMPLES, "--seed", "20261129"])
            .args(["--workers", "2", "--request-timeout", "30"])
            // Its cache (`.schemathesis/`) goes in the scratch directory, not the checkout.
            .current_dir(&scratch_dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("schemathesis thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}
