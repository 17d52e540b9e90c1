//! What the OpenAI-compatible path adds: the latency of `POST /v1/chat/completions` through
//! `splai serve` and a `splai-worker` (OpenAI-compatible backend) against the model-server
//! double, compared with calling the double's own `/v1/chat/completions` directly.
//!
//! `cargo run --release -p splai-e2e --bin openai-latency -- [requests]` (default 200 each
//! way, sequential, after 20 warm-up requests each). Prints p50/p90/p99 and the rate reached.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use splai_e2e::SplaiServer;
use splai_e2e::model_server::ModelServer;
use splai_e2e::worker::SplaiWorker;

const WARM_UP: usize = 20;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let double = ModelServer::start().await;
    let dir = tempfile_dir();
    let artifacts = dir.join("artifacts");
    let root = artifacts.to_str().expect("a UTF-8 path");
    let server = SplaiServer::start(
        &dir.join("bench.db"),
        &[
            ("SPLAI_OPENAI_COMPAT", "true"),
            ("SPLAI_ARTIFACT_ROOT", root),
        ],
    );
    let _worker = SplaiWorker::start(
        &server.base,
        "bench-worker",
        &[
            ("SPLAI_WORKER_BACKENDS", "openai"),
            ("SPLAI_OPENAI_BASE_URL", double.url()),
            ("SPLAI_ARTIFACT_ROOT", root),
        ],
    )
    .await;
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let body = json!({
        "model": "llama3-8b-q4",
        "messages": [{"role": "user", "content": "How far is the moon?"}],
    });
    let direct = format!("{}/v1/chat/completions", double.url());
    let splai = format!("{}/v1/chat/completions", server.base);
    let direct_ms = measure(&http, &direct, &body, n).await;
    let splai_ms = measure(&http, &splai, &body, n).await;
    report("direct to the double", &direct_ms);
    report("through SPLAI (job + worker)", &splai_ms);
    let added = |q: f64| quantile(&splai_ms, q) - quantile(&direct_ms, q);
    println!(
        "added by SPLAI: p50 {:.2} ms, p99 {:.2} ms ({n} sequential requests each way)",
        added(0.50),
        added(0.99)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Milliseconds per request, `n` sequential requests after a warm-up.
async fn measure(http: &reqwest::Client, url: &str, body: &Value, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let start = Instant::now();
        let resp = http.post(url).json(body).send().await.expect("request");
        let status = resp.status();
        let answer: Value = resp.json().await.expect("a JSON answer");
        assert!(status.is_success(), "{url}: {status}: {answer}");
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "double: How far is the moon?"
        );
        if i >= WARM_UP {
            out.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, sorted: &[f64]) {
    let total: f64 = sorted.iter().sum();
    println!(
        "{what}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, {:.0} req/s",
        quantile(sorted, 0.50),
        quantile(sorted, 0.90),
        quantile(sorted, 0.99),
        sorted.len() as f64 / Duration::from_secs_f64(total / 1000.0).as_secs_f64()
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("splai-openai-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
