//! `model_download`: fetches a Hugging Face model repository into the worker's model cache
//! (`<cache>/<org>/<name>`), natively over HTTP, one file at a time, each written under a
//! temporary name and renamed into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use splai_shared::engine::Assignment;
use tokio::io::AsyncWriteExt;

use super::inputs::input_bool;
use super::{Executors, TaskError, input_str};
use crate::models::http::error_chain;

/// Present in a model directory while a download into it is unfinished, so a later
/// `only_if_missing` run does not mistake a partial model for a cached one.
const INCOMPLETE_MARKER: &str = ".splai-download-incomplete";

/// Suffix of files being written; they are renamed into place when complete.
const PARTIAL_SUFFIX: &str = ".part";

/// How long a response's headers may take: a hung connection must not pin the attempt until
/// the task's timeout. File bodies may take as long as they need.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the download is about, for messages.
struct Target<'a> {
    endpoint: &'a str,
    model: &'a str,
    revision: &'a str,
}

#[derive(Deserialize)]
struct ModelInfo {
    siblings: Option<Vec<Sibling>>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

/// Downloads the task's model unless the cache has it.
pub(super) async fn run(ex: &Executors, task: &Assignment) -> Result<Value, TaskError> {
    let model = input_str(task, "model")
        .ok_or_else(|| TaskError::invalid("model_download needs `model` (e.g. `org/name`)"))?;
    check_model_id(&model)?;
    let source = input_str(task, "source").unwrap_or_else(|| "huggingface".to_owned());
    if !source_supported(&source) {
        return Err(TaskError::invalid(format!(
            "model_download source `{source}` is not supported: only `huggingface`"
        )));
    }
    let revision = input_str(task, "revision").unwrap_or_else(|| "main".to_owned());
    check_revision(&revision)?;
    let only_if_missing = input_bool(task, "only_if_missing")?.unwrap_or(true);
    let dir = ex.config.model_cache_dir.join(&model);
    let report = |files: Vec<String>, bytes: u64, downloaded: bool| {
        json!({
            "model": model,
            "source": "huggingface",
            "revision": revision,
            "path": dir.display().to_string(),
            "files": files,
            "bytes": bytes,
            "downloaded": downloaded,
        })
    };
    if only_if_missing && let Some((files, bytes)) = cached(&dir).await {
        return Ok(report(files, bytes, false));
    }
    let target = Target {
        endpoint: &ex.config.hf_endpoint,
        model: &model,
        revision: &revision,
    };
    let files = list_files(ex, &target).await?;
    let io = |e: std::io::Error| TaskError::Retryable(format!("writing {}: {e}", dir.display()));
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    tokio::fs::write(dir.join(INCOMPLETE_MARKER), b"")
        .await
        .map_err(io)?;
    let mut bytes = 0;
    for file in &files {
        bytes += download_file(ex, &target, file, &dir.join(file)).await?;
    }
    tokio::fs::remove_file(dir.join(INCOMPLETE_MARKER))
        .await
        .map_err(io)?;
    Ok(report(files, bytes, true))
}

/// Why `model` is not an id `model_download` accepts, if it is not: `name` or `org/name`, each
/// part plain, so nothing can leave the cache directory. The gateway checks prefetch requests
/// with it too, so a bad id is refused before any task is written.
pub fn model_id_problem(model: &str) -> Option<String> {
    let parts: Vec<&str> = model.split('/').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (parts.len() > 2 || !parts.iter().all(plain)).then(|| {
        format!(
            "model `{model}` is not a Hugging Face model id (`org/name` of letters, digits, \
             `-`, `_`, `.`)"
        )
    })
}

/// Whether `model_download` can fetch from `source` (only Hugging Face, by either name).
pub fn source_supported(source: &str) -> bool {
    matches!(source.to_ascii_lowercase().as_str(), "huggingface" | "hf")
}

fn check_model_id(model: &str) -> Result<(), TaskError> {
    model_id_problem(model).map_or(Ok(()), |m| Err(TaskError::invalid(m)))
}

/// A branch, tag or commit (`refs/pr/1` style names allowed), never `..`.
fn check_revision(revision: &str) -> Result<(), TaskError> {
    let ok_chars = revision
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if !ok_chars || revision.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(TaskError::invalid(format!(
            "revision `{revision}` is not a valid branch, tag or commit"
        )));
    }
    Ok(())
}

/// A repository file name that stays inside the model directory.
fn is_safe_file(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && p != INCOMPLETE_MARKER)
}

/// The files of a complete cached copy and their total size; `None` when there is none (no
/// directory, no files, or an unfinished download).
async fn cached(dir: &Path) -> Option<(Vec<String>, u64)> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        if dir.join(INCOMPLETE_MARKER).exists() {
            return None;
        }
        let mut files = Vec::new();
        walk(&dir, &dir, &mut files);
        files.sort();
        let bytes = files.iter().map(|(_, size)| size).sum();
        let names: Vec<String> = files.into_iter().map(|(name, _)| name).collect();
        (!names.is_empty()).then_some((names, bytes))
    })
    .await
    .ok()
    .flatten()
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            walk(root, &path, out);
        } else if !entry
            .file_name()
            .to_string_lossy()
            .ends_with(PARTIAL_SUFFIX)
        {
            let name = path.strip_prefix(root).unwrap_or(&path);
            out.push((name.to_string_lossy().into_owned(), meta.len()));
        }
    }
}

/// The repository's files at the revision (`siblings[].rfilename`).
#[tracing::instrument(skip_all, fields(model = target.model, revision = target.revision))]
async fn list_files(ex: &Executors, target: &Target<'_>) -> Result<Vec<String>, TaskError> {
    let url = url(target, &["api", "models"], &["revision", target.revision])?;
    let resp = get(ex, target, url).await?;
    let info: ModelInfo = resp.json().await.map_err(|e| {
        TaskError::Retryable(format!(
            "model_download: unreadable model listing from {}: {e}",
            target.endpoint
        ))
    })?;
    let files: Vec<String> = info
        .siblings
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.rfilename)
        .collect();
    if let Some(bad) = files.iter().find(|f| !is_safe_file(f)) {
        return Err(TaskError::Permanent(format!(
            "model_download: model `{}` lists an unsafe file name `{bad}`",
            target.model
        )));
    }
    if files.is_empty() {
        return Err(TaskError::Permanent(format!(
            "model_download: model `{}` has no files at revision {}",
            target.model, target.revision
        )));
    }
    Ok(files)
}

/// `<endpoint>/<before...>/<model>/<after...>`, each part percent-encoded as a path segment
/// (an endpoint with a path, such as a mirror's prefix, is kept).
fn url(target: &Target<'_>, before: &[&str], after: &[&str]) -> Result<reqwest::Url, TaskError> {
    let mut url = reqwest::Url::parse(target.endpoint).map_err(|e| {
        TaskError::Permanent(format!(
            "SPLAI_HF_ENDPOINT `{}` is not a URL: {e}",
            target.endpoint
        ))
    })?;
    let segments = before
        .iter()
        .copied()
        .chain(target.model.split('/'))
        .chain(after.iter().copied());
    url.path_segments_mut()
        .map_err(|()| {
            TaskError::Permanent(format!(
                "SPLAI_HF_ENDPOINT `{}` cannot have a path",
                target.endpoint
            ))
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// A GET with the token, classified: unreachable or 5xx/429 retryable, 401/403/404 and
/// other refusals permanent.
async fn get(
    ex: &Executors,
    target: &Target<'_>,
    url: reqwest::Url,
) -> Result<reqwest::Response, TaskError> {
    let mut req = ex.http.get(url);
    if let Some(token) = &ex.config.hf_token {
        req = req.bearer_auth(token.expose());
    }
    let unreachable = |cause: String| {
        TaskError::Retryable(format!(
            "model_download needs network access to Hugging Face: cannot reach {} ({cause}); \
             set SPLAI_HF_ENDPOINT to a reachable mirror or pre-seed SPLAI_MODEL_CACHE_DIR",
            target.endpoint
        ))
    };
    let resp = tokio::time::timeout(RESPONSE_TIMEOUT, req.send())
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", RESPONSE_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(error_chain(&e.without_url())))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let what = format!(
        "model_download: {} answered {status} for model `{}` (revision {})",
        target.endpoint, target.model, target.revision
    );
    Err(match status.as_u16() {
        401 | 403 => TaskError::Permanent(format!(
            "{what}: the model is private or gated; set HF_TOKEN to a token with access"
        )),
        404 => TaskError::Permanent(format!("{what}: no such model, revision or file")),
        408 | 429 => TaskError::Retryable(what),
        _ if status.is_server_error() => TaskError::Retryable(what),
        _ => TaskError::Permanent(what),
    })
}

/// Streams one file to a temporary name beside `path`, then renames it into place; returns
/// its size. Nothing is left under the final name unless the whole file arrived.
#[tracing::instrument(skip_all, fields(model = target.model, file = file))]
async fn download_file(
    ex: &Executors,
    target: &Target<'_>,
    file: &str,
    path: &Path,
) -> Result<u64, TaskError> {
    let mut segments = vec!["resolve", target.revision];
    segments.extend(file.split('/'));
    let resp = get(ex, target, url(target, &[], &segments)?).await?;
    let expected = resp.content_length();
    let io = |e: std::io::Error| TaskError::Retryable(format!("writing {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await.map_err(io)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = PartialFile(Some(dir.join(format!(
        ".{name}.{:016x}{PARTIAL_SUFFIX}",
        rand::random::<u64>()
    ))));
    let tmp = partial.path();
    let mut out = tokio::fs::File::create(tmp).await.map_err(io)?;
    let mut written = 0_u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            TaskError::Retryable(format!(
                "model_download: the download of `{file}` broke off: {}",
                error_chain(&e.without_url())
            ))
        })?;
        out.write_all(&chunk).await.map_err(io)?;
        written += chunk.len() as u64;
    }
    if expected.is_some_and(|n| n != written) {
        return Err(TaskError::Retryable(format!(
            "model_download: `{file}` arrived incomplete ({written} of {} bytes)",
            expected.unwrap_or_default()
        )));
    }
    out.sync_all().await.map_err(io)?;
    drop(out);
    tokio::fs::rename(tmp, path).await.map_err(io)?;
    partial.keep();
    Ok(written)
}

/// A temporary file removed when dropped (an error, or the attempt cancelled) unless kept.
struct PartialFile(Option<PathBuf>);

impl PartialFile {
    fn path(&self) -> &Path {
        // Invariant: the path is only taken by `keep`, which consumes the guard.
        self.0
            .as_deref()
            .expect("a partial file has a path until kept")
    }

    /// The file was renamed into place: nothing to clean up.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use splai_shared::domain::TaskType;

    use super::*;
    use crate::executor::testing::{a_task, executors};

    fn download(inputs: Value) -> Assignment {
        a_task(TaskType::ModelDownload, inputs)
    }

    /// Model ids and revisions that could escape the cache are refused.
    #[test]
    fn ids_and_file_names_cannot_escape_the_cache() {
        for bad in [
            "../x",
            "org/../x",
            "a/b/c",
            "/abs",
            "org/.hidden",
            "",
            "org/na me",
        ] {
            assert!(check_model_id(bad).is_err(), "{bad}");
        }
        for good in [
            "gpt2",
            "sentence-transformers/all-MiniLM-L6-v2",
            "org/v1.5_x",
        ] {
            assert!(check_model_id(good).is_ok(), "{good}");
        }
        assert!(check_revision("refs/pr/1").is_ok() && check_revision("a/../b").is_err());
        assert!(is_safe_file("1_Pooling/config.json") && !is_safe_file("../x"));
        assert!(!is_safe_file("a//b") && !is_safe_file(INCOMPLETE_MARKER));
    }

    /// A cached model is skipped without any network access; a partial one is not.
    #[tokio::test]
    async fn cached_models_are_skipped_unless_incomplete() {
        let (ex, dir) = executors(|c| c.hf_endpoint = "http://127.0.0.1:9".into());
        let model_dir = dir.path().join("models/org/name");
        std::fs::create_dir_all(model_dir.join("sub")).unwrap();
        std::fs::write(model_dir.join("config.json"), "{}").unwrap();
        std::fs::write(model_dir.join("sub/weights.bin"), "1234").unwrap();
        let task = download(json!({"model": "org/name"}));
        let out = run(&ex, &task).await.unwrap();
        assert_eq!(out["downloaded"], false);
        assert_eq!(out["files"], json!(["config.json", "sub/weights.bin"]));
        assert_eq!(out["bytes"], 6);
        std::fs::write(model_dir.join(INCOMPLETE_MARKER), "").unwrap();
        let e = run(&ex, &task).await.unwrap_err();
        assert!(
            e.is_retryable() && e.to_string().contains("cannot reach"),
            "{e}"
        );
    }

    /// Only Hugging Face is a source; a model is required.
    #[tokio::test]
    async fn unsupported_inputs_fail_permanently() {
        let (ex, _dir) = executors(|_| {});
        for inputs in [json!({}), json!({"model": "a/b", "source": "s3"})] {
            assert!(
                !run(&ex, &download(inputs))
                    .await
                    .unwrap_err()
                    .is_retryable()
            );
        }
    }

    /// Mirror endpoints keep their path prefix; revisions with slashes stay one segment.
    #[test]
    fn urls_keep_mirror_prefixes_and_encode_revisions() {
        let target = Target {
            endpoint: "https://mirror.example/hf/",
            model: "org/name",
            revision: "refs/pr/1",
        };
        let listing = url(&target, &["api", "models"], &["revision", target.revision]).unwrap();
        assert_eq!(
            listing.as_str(),
            "https://mirror.example/hf/api/models/org/name/revision/refs%2Fpr%2F1"
        );
    }
}
