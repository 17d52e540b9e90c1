//! `splai dev`: the server and one in-process worker on the embedded default, so that a fresh
//! checkout runs jobs end to end with nothing installed.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use splai_shared::clock::SystemClock;
use splai_shared::domain::ANY_MODEL;
use splai_worker::config::Config as WorkerConfig;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::server;

/// Worker settings `splai dev` chooses when the environment does not.
const DEV_DEFAULTS: &[(&str, &str)] = &[
    ("SPLAI_WORKER_ID", "dev-worker"),
    ("SPLAI_MAX_PARALLEL_TASKS", "4"),
    ("SPLAI_SHUTDOWN_GRACE_SECONDS", "10"),
];

/// The worker's configuration for a gateway at `base`: the environment first, then the dev
/// defaults; the echo backend when no model server is configured, advertising every model
/// (`*`), so whatever model a client names (an OpenAI SDK's `gpt-4o-mini`) is answered.
///
/// # Errors
/// An invalid worker variable, named in the message.
pub fn worker_config(
    base: &str,
    server: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<WorkerConfig> {
    let artifact_root = server.artifact_root.display().to_string();
    let lookup = |k: &str| -> Option<String> {
        match k {
            "SPLAI_CONTROL_PLANE_URL" => Some(base.to_owned()),
            // Server and worker must agree on where outputs live.
            "SPLAI_ARTIFACT_ROOT" => Some(artifact_root.clone()),
            _ => env(k).filter(|v| !v.trim().is_empty()).or_else(|| {
                DEV_DEFAULTS
                    .iter()
                    .find(|(name, _)| *name == k)
                    .map(|(_, v)| (*v).to_owned())
            }),
        }
    };
    let mut config = WorkerConfig::from_lookup(lookup)?;
    if config.capabilities.backends.is_empty() && config.models.configured().is_empty() {
        config.capabilities.backends = vec!["echo".to_owned()];
        config.capabilities.models.push(ANY_MODEL.to_owned());
    }
    Ok(config)
}

/// Runs the server and the worker until Ctrl-C or SIGTERM; then the worker finishes (or hands
/// back) its tasks first, and the server drains last.
///
/// # Errors
/// Start-up failures of either.
pub async fn run(mut config: Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    // A fresh checkout should answer OpenAI SDKs; SPLAI_OPENAI_COMPAT=false still turns it off.
    if std::env::var("SPLAI_OPENAI_COMPAT").is_err() {
        config.openai_compat = true;
    }
    config.listen =
        listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], config.listen.port())));
    let stop_server = CancellationToken::new();
    let running = server::start(
        config.clone(),
        Arc::new(SystemClock),
        stop_server.clone().cancelled_owned(),
    )
    .await?;
    let base = format!("http://{}", running.addr);
    let worker = worker_config(&base, &config, |k| std::env::var(k).ok())?;
    let deps = splai_worker::build(&worker)
        .await
        .context("starting the in-process worker")?;
    if let Some(addr) = worker.metrics_addr {
        splai_worker::metrics::serve(addr, deps.metrics.clone()).await?;
    }
    print_banner(&base, &config, &worker);
    let stop_worker = CancellationToken::new();
    let worker_done = tokio::spawn(splai_worker::run(
        worker.gateway,
        deps,
        stop_worker.clone().cancelled_owned(),
    ));
    server::shutdown_signal().await;
    stop_worker.cancel();
    worker_done.await.context("worker task")??;
    stop_server.cancel();
    running.handle.await.context("server task")?
}

fn print_banner(base: &str, config: &Config, worker: &WorkerConfig) {
    let servers: Vec<String> = worker
        .models
        .configured()
        .iter()
        .map(|(name, e)| format!("{name} at {}", e.base_url))
        .collect();
    eprintln!("splai listening on {base}");
    eprintln!();
    eprintln!("SPLAI dev is running: server and one worker in this process.");
    eprintln!(
        "  state:     {} (SQLite)",
        config.backends.sqlite_path.display()
    );
    eprintln!("  artifacts: {}", config.artifact_root.display());
    let backends = worker.capabilities.backends.join(", ");
    if servers.is_empty() {
        eprintln!("  worker:    {}, backend: {backends}", id(worker));
        eprintln!(
            "  (no model server configured: the echo backend answers every prompt with the \
             prompt itself; set SPLAI_OLLAMA_BASE_URL or SPLAI_OPENAI_BASE_URL to use a real \
             model)"
        );
    } else {
        eprintln!(
            "  worker:    {}, backends: {backends} ({})",
            id(worker),
            servers.join(", ")
        );
    }
    eprintln!();
    eprintln!("Try:");
    eprintln!("  curl -s {base}/v1/jobs -d '{{\"type\":\"chat\",\"input\":\"Hello, SPLAI\"}}'");
    eprintln!("  curl -s {base}/v1/jobs/<job_id>");
    eprintln!("  curl -s {base}/v1/jobs/<job_id>/tasks/generate/output");
    if config.openai_compat {
        eprintln!(
            "  curl -s {base}/v1/chat/completions -d '{{\"model\":\"any\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'"
        );
        eprintln!("  (OpenAI SDKs: base_url={base}/v1)");
    }
    eprintln!();
    eprintln!(
        "Ctrl-C stops the worker (running tasks finish or are handed back), then the server."
    );
}

fn id(worker: &WorkerConfig) -> String {
    worker
        .capabilities
        .worker_id
        .as_ref()
        .map_or_else(String::new, ToString::to_string)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn worker(vars: &[(&str, &str)]) -> WorkerConfig {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let server = Config::from_lookup(|_| None).unwrap();
        worker_config("http://127.0.0.1:9", &server, |k| map.get(k).cloned()).unwrap()
    }

    /// With no model server configured the dev worker uses echo; with one, it uses that.
    #[test]
    fn dev_worker_uses_echo_only_without_a_model_server() {
        let bare = worker(&[]);
        assert_eq!(bare.capabilities.backends, ["echo"]);
        assert_eq!(
            bare.capabilities.models,
            [ANY_MODEL],
            "echo serves every model"
        );
        assert_eq!(bare.gateway.url, "http://127.0.0.1:9");
        assert_eq!(bare.capabilities.worker_id.unwrap().as_str(), "dev-worker");
        let ollama = worker(&[("SPLAI_OLLAMA_BASE_URL", "http://127.0.0.1:11434")]);
        assert!(
            ollama.capabilities.backends.is_empty(),
            "all configured servers"
        );
        assert!(
            ollama.capabilities.models.is_empty(),
            "only what the server lists"
        );
        assert_eq!(ollama.models.configured()[0].0, "ollama");
        let chosen = worker(&[("SPLAI_WORKER_BACKENDS", "echo"), ("SPLAI_WORKER_ID", "me")]);
        assert_eq!(chosen.capabilities.worker_id.unwrap().as_str(), "me");
    }
}
