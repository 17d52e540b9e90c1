//! The SPLAI worker: a long-running process on a GPU or CPU host that speaks only HTTP(S) to
//! the gateway. It registers, heartbeats with its leases, claims tasks in batches, runs them
//! through executors and model backends, stores outputs as artifacts and reports in batches.
//!
//! Layout:
//! - [`config`]: every worker variable, read once.
//! - [`client`]: the gateway's worker API.
//! - `runtime`: the claim, heartbeat and report loops, and shutdown ([`run`]).
//! - [`executor`]: one executor per task type.
//! - [`models`]: the model-server seam (Ollama, OpenAI-compatible, echo).
//! - [`metrics`]: the worker's metrics and their `/metrics` listener.
//! - [`sysinfo`]: what the host offers.

pub mod client;
pub mod config;
pub mod executor;
pub mod metrics;
pub mod models;
mod runtime;
pub mod sysinfo;

use std::sync::Arc;

use anyhow::Context;
use splai_shared::domain::WorkerRegistration;

pub use runtime::{Deps, run};

use crate::client::GatewayClient;
use crate::config::{Config, ToolNetwork};
use crate::executor::Executors;
use crate::models::ModelBackends;

/// Builds everything the worker runs with from its configuration: the gateway client, the
/// model backends, the artifact store, and the registration (host detection plus the model
/// inventory).
///
/// # Errors
/// A backend named in `SPLAI_WORKER_BACKENDS` without its server configured, or a client that
/// cannot be built.
pub async fn build(config: &Config) -> anyhow::Result<Deps> {
    let worker_id = config
        .capabilities
        .worker_id
        .clone()
        .context("SPLAI_WORKER_ID must be set")?;
    let gateway = GatewayClient::new(&config.gateway.url, config.gateway.token.clone(), worker_id)?;
    let metrics = Arc::new(metrics::WorkerMetrics::default());
    let http = models::http::client();
    let models = ModelBackends::from_config(&config.models, &config.capabilities.backends, &http)?
        .metered(&metrics);
    if models.is_empty() {
        tracing::warn!(
            "no model server configured: llm_inference tasks will fail here; set \
             SPLAI_OLLAMA_BASE_URL or SPLAI_OPENAI_BASE_URL, or SPLAI_WORKER_BACKENDS=echo"
        );
    }
    if config.executors.tool_network == ToolNetwork::Auto {
        // Probed beside registration rather than before it: creating the namespaces takes
        // milliseconds, and a tool task that comes first waits for the same cached probe.
        tokio::spawn(async {
            if !executor::network_isolation_available().await {
                tracing::warn!(
                    "this host cannot give tool commands a private network namespace \
                     (unshare); tool_execution tasks will run with the host network \
                     (SPLAI_TOOL_NETWORK=none refuses them instead)"
                );
            }
        });
    }
    let artifacts = config
        .artifact_backend
        .open(
            &config.artifact_root,
            &config.artifact_s3,
            &splai_shared::aws::SharedSdk::default(),
        )
        .await
        .context("opening the artifact store (SPLAI_ARTIFACT_BACKEND)")?
        .store;
    let executors = Executors {
        models: models.clone(),
        artifacts: artifacts.clone(),
        config: Arc::new(config.executors.clone()),
        http,
        gateway: Some(gateway.clone()),
    };
    let mut served = Vec::new();
    for name in models.names() {
        if let Some(b) = models.get(name) {
            served.extend(b.list_models().await);
        }
    }
    let cache = config.executors.model_cache_dir.clone();
    let extra = config.capabilities.models.clone();
    let inventory = Arc::new(move || {
        let mut m = extra.clone();
        m.extend(served.iter().cloned());
        m.extend(sysinfo::cached_models(&cache));
        m.sort();
        m.dedup();
        m
    });
    let caps = &config.capabilities;
    let gpu_memory = sysinfo::nvidia_gpu_memory_mb();
    let registration = WorkerRegistration {
        cpu: sysinfo::cpus(),
        memory_mb: sysinfo::memory_mb(),
        gpu: caps.gpu.unwrap_or(gpu_memory.is_some()),
        gpu_memory_mb: caps.gpu_memory_mb.or(gpu_memory).unwrap_or(0),
        models: inventory(),
        tools: caps.tools.clone(),
        backends: models.names().to_vec(),
        locality: caps.locality.clone(),
    };
    Ok(Deps {
        gateway,
        executors,
        artifacts,
        registration,
        inventory,
        metrics,
    })
}
