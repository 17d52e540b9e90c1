//! `model_download` against the double's Hugging Face endpoints.

use std::path::Path;

use serde_json::json;
use splai_e2e::model_server::{self, HF_FILES, ModelServer};
use splai_shared::domain::TaskType;
use splai_worker::config::Secret;
use splai_worker::executor::TaskError;
use splai_worker::models::ModelBackends;

use crate::{a_task, executors, unreachable_url};

fn download(model: &str) -> splai_shared::engine::Assignment {
    a_task(TaskType::ModelDownload, json!({ "model": model }))
}

/// Every file name under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Files land in `<cache>/<org>/<name>` with their exact contents; a second run skips.
#[tokio::test]
async fn downloads_into_the_cache_and_skips_when_present() {
    let server = ModelServer::start().await;
    let (ex, dir) = executors(ModelBackends::new(), |c| {
        c.hf_endpoint = server.url().to_owned();
        c.hf_token = Some(Secret::new("hf_secret"));
    });
    let out = ex.run(&download("org/tiny")).await.unwrap();
    assert_eq!(out["downloaded"], true);
    assert_eq!(out["files"], json!(HF_FILES));
    let model_dir = dir.path().join("models/org/tiny");
    let mut expected: Vec<String> = HF_FILES.iter().map(|f| (*f).to_owned()).collect();
    expected.sort();
    assert_eq!(files_under(&model_dir), expected);
    let mut total = 0;
    for f in HF_FILES {
        let want = model_server::hf_file(f).unwrap();
        total += want.len();
        assert_eq!(std::fs::read(model_dir.join(f)).unwrap(), want, "{f}");
    }
    assert_eq!(out["bytes"], total);
    let weights = "/org/tiny/resolve/main/model.safetensors";
    assert_eq!(
        server.last_authorization(weights).as_deref(),
        Some("Bearer hf_secret")
    );

    let again = ex.run(&download("org/tiny")).await.unwrap();
    assert_eq!(again["downloaded"], false);
    assert_eq!(again["bytes"], total);
    assert_eq!(server.requests(weights), 1);
}

/// A file that fails midway leaves nothing under its name; the next run downloads again.
#[tokio::test]
async fn failed_downloads_leave_no_partial_files_and_are_retried() {
    let server = ModelServer::start().await;
    let weights = "/org/tiny/resolve/main/model.safetensors";
    server.fail_next(weights, 502, "bad gateway", 1);
    let (ex, dir) = executors(ModelBackends::new(), |c| {
        c.hf_endpoint = server.url().to_owned()
    });
    let e = ex.run(&download("org/tiny")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let model_dir = dir.path().join("models/org/tiny");
    let left = files_under(&model_dir);
    assert!(
        !left.iter().any(|f| f.contains("model.safetensors")),
        "{left:?}"
    );
    let out = ex.run(&download("org/tiny")).await.unwrap();
    assert_eq!(out["downloaded"], true);
    assert!(model_dir.join("model.safetensors").is_file());
}

/// A model the hub does not have fails permanently, naming the status and the model.
#[tokio::test]
async fn missing_models_fail_permanently() {
    let server = ModelServer::start().await;
    server.fail_next(
        "/api/models/org/missing/revision/main",
        404,
        r#"{"error":"Repository not found"}"#,
        1,
    );
    let (ex, _dir) = executors(ModelBackends::new(), |c| {
        c.hf_endpoint = server.url().to_owned()
    });
    let e = ex.run(&download("org/missing")).await.unwrap_err();
    assert!(
        matches!(&e, TaskError::Permanent(m) if m.contains("404") && m.contains("org/missing")),
        "{e:?}"
    );
}

/// Without network access the error says what to do about it.
#[tokio::test]
async fn unreachable_hub_fails_with_a_clear_message() {
    let url = unreachable_url();
    let (ex, _dir) = executors(ModelBackends::new(), |c| c.hf_endpoint = url.clone());
    let e = ex.run(&download("org/tiny")).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    let shown = e.to_string();
    let expected =
        format!("model_download needs network access to Hugging Face: cannot reach {url} (");
    assert!(shown.starts_with(&expected), "{shown}");
    assert!(
        shown.ends_with(
            "set SPLAI_HF_ENDPOINT to a reachable mirror or pre-seed SPLAI_MODEL_CACHE_DIR"
        ),
        "{shown}"
    );
}
