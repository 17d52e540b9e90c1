//! Client commands: thin wrappers over the HTTP API that print its JSON.

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use super::Target;

/// Arguments of `splai submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job type (selects the planner template).
    #[arg(long = "type", default_value = "chat")]
    pub job_type: String,
    /// The job's input text.
    #[arg(long, conflicts_with = "file")]
    pub input: Option<String>,
    /// A JSON file with the whole submit body (`-` for stdin); a `.jsonl` file (or any file
    /// with `--jsonl`) holds one job per line, submitted in bulk.
    #[arg(long)]
    pub file: Option<String>,
    /// Read `--file` as JSON lines, one job per line, and submit them through the bulk API.
    #[arg(long)]
    pub jsonl: bool,
    /// Jobs per bulk request when submitting JSON lines.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Priority class: interactive, standard or batch.
    #[arg(long)]
    pub priority: Option<String>,
    /// Model to use.
    #[arg(long)]
    pub model: Option<String>,
    /// Tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Idempotency key, so the submit is safe to repeat.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub(super) target: Target,
}

/// Arguments of `splai tasks`.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// Job id.
    pub job_id: String,
    /// Only tasks with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only tasks run by this worker.
    #[arg(long)]
    pub worker_id: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Arguments of `splai jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only jobs with this status.
    #[arg(long)]
    pub status: Option<String>,
    /// Only this tenant's jobs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only jobs of this type.
    #[arg(long = "type")]
    pub job_type: Option<String>,
    /// Page size.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub(super) fn url(target: &Target, path: &str) -> String {
    format!("{}{path}", target.server.trim_end_matches('/'))
}

async fn print_response(resp: reqwest::Response) -> anyhow::Result<()> {
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .context("the server's answer was not JSON")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    if !status.is_success() {
        bail!("server answered {status}");
    }
    Ok(())
}

/// The HTTP client for client commands; it sends `SPLAI_API_TOKEN`, when set, as a Bearer
/// token (marked sensitive, so it is never logged).
pub(super) fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let token = std::env::var("SPLAI_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok());
    if let Some(mut value) = token {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap_or_default()
}

/// GET a path and print the JSON.
///
/// # Errors
/// Connection failures and non-2xx answers.
pub async fn get(target: &Target, path: &str) -> anyhow::Result<()> {
    let resp = client()
        .get(url(target, path))
        .send()
        .await
        .with_context(|| format!("is splai running at {}?", target.server))?;
    print_response(resp).await
}

/// Send a body-less request and print the JSON.
///
/// # Errors
/// Connection failures and non-2xx answers.
pub async fn send(target: &Target, method: reqwest::Method, path: &str) -> anyhow::Result<()> {
    let resp = client()
        .request(method, url(target, path))
        .send()
        .await
        .with_context(|| format!("is splai running at {}?", target.server))?;
    print_response(resp).await
}

/// `splai submit`.
///
/// # Errors
/// An unreadable file, connection failures and non-2xx answers.
pub async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let is_jsonl = a.jsonl
        || a.file
            .as_deref()
            .is_some_and(|f| f.ends_with(".jsonl") || f.ends_with(".ndjson"));
    if is_jsonl {
        return super::bulk::submit_lines(a).await;
    }
    let mut body: Value = match a.file.as_deref() {
        Some("-") => {
            serde_json::from_reader(std::io::stdin()).context("reading the job from stdin")?
        }
        Some(path) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {path}"))?)
                .with_context(|| format!("{path} is not JSON"))?
        }
        None => json!({ "type": a.job_type, "input": a.input.unwrap_or_default() }),
    };
    for (key, value) in [
        ("priority", a.priority),
        ("model", a.model),
        ("tenant", a.tenant),
    ] {
        if let Some(v) = value {
            body[key] = Value::String(v);
        }
    }
    let mut req = client().post(url(&a.target, "/v1/jobs")).json(&body);
    if let Some(key) = a.idempotency_key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("is splai running at {}?", a.target.server))?;
    print_response(resp).await
}

/// `splai tasks`.
///
/// # Errors
/// Connection failures and non-2xx answers.
pub async fn tasks(a: TasksArgs) -> anyhow::Result<()> {
    let mut req = client().get(url(&a.target, &format!("/v1/jobs/{}/tasks", a.job_id)));
    for (k, v) in [("status", a.status), ("worker_id", a.worker_id)] {
        if let Some(v) = v {
            req = req.query(&[(k, v)]);
        }
    }
    print_response(
        req.send()
            .await
            .with_context(|| format!("is splai running at {}?", a.target.server))?,
    )
    .await
}

/// `splai jobs`.
///
/// # Errors
/// Connection failures and non-2xx answers.
pub async fn jobs(a: JobsArgs) -> anyhow::Result<()> {
    let mut req = client().get(url(&a.target, "/v1/jobs"));
    let limit = a.limit.map(|l| l.to_string());
    for (k, v) in [
        ("status", a.status),
        ("tenant", a.tenant),
        ("type", a.job_type),
        ("limit", limit),
        ("cursor", a.cursor),
    ] {
        if let Some(v) = v {
            req = req.query(&[(k, v)]);
        }
    }
    print_response(
        req.send()
            .await
            .with_context(|| format!("is splai running at {}?", a.target.server))?,
    )
    .await
}

/// `splai watch`: prints each SSE event as `<event> <json>` until the stream ends.
///
/// # Errors
/// Connection failures and non-2xx answers.
pub async fn watch(target: &Target, job_id: &str) -> anyhow::Result<()> {
    let resp = client()
        .get(url(target, &format!("/v1/jobs/{job_id}/stream")))
        .send()
        .await
        .with_context(|| format!("is splai running at {}?", target.server))?;
    if !resp.status().is_success() {
        return print_response(resp).await;
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut event = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(
            &chunk.context("reading the event stream")?,
        ));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let line = line.trim_end();
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                println!("{event} {}", data.trim());
            }
        }
    }
    Ok(())
}
