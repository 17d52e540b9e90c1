//! `splai submit --file jobs.jsonl`: one job per line, sent through the bulk submit API in
//! batches; one result line per job.

use std::io::BufRead;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::client::{SubmitArgs, client, url};

/// Reads jobs (one JSON object per non-empty line) and submits them in batches, printing one
/// `{"line", "status", "job_id" | "error"}` line per job. Fails when any job was rejected.
///
/// # Errors
/// An unreadable file, a line that is not JSON, connection failures, a refused batch, or
/// rejected jobs.
pub async fn submit_lines(a: SubmitArgs) -> anyhow::Result<()> {
    let path = a.file.as_deref().unwrap_or("-");
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("reading {path}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut jobs = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {path}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut job: Value = serde_json::from_str(&line)
            .with_context(|| format!("{path} line {}: not a JSON object", n + 1))?;
        for (key, value) in [
            ("priority", &a.priority),
            ("model", &a.model),
            ("tenant", &a.tenant),
        ] {
            if let Some(v) = value
                && job.get(key).is_none()
            {
                job[key] = Value::String(v.clone());
            }
        }
        jobs.push((n + 1, job));
    }
    let http = client();
    let mut rejected = 0;
    for chunk in jobs.chunks(a.batch_size as usize) {
        let body = json!({ "jobs": chunk.iter().map(|(_, j)| j).collect::<Vec<_>>() });
        let resp = http
            .post(url(&a.target, "/v1/jobs/batch"))
            .json(&body)
            .send()
            .await
            .with_context(|| format!("is splai running at {}?", a.target.server))?;
        let status = resp.status();
        let answer: Value = resp
            .json()
            .await
            .context("the server's answer was not JSON")?;
        if !status.is_success() {
            bail!("server answered {status}: {answer}");
        }
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        for ((line, _), r) in chunk.iter().zip(results) {
            if r["status"] == "rejected" {
                rejected += 1;
            }
            let mut out = json!({ "line": line, "status": r["status"] });
            for key in ["job_id", "error"] {
                if let Some(v) = r.get(key) {
                    out[key] = v.clone();
                }
            }
            println!("{out}");
        }
    }
    if rejected > 0 {
        bail!("{rejected} of {} jobs were rejected", jobs.len());
    }
    Ok(())
}
