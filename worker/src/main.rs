//! The `splai-worker` binary: reads its configuration, sets up logging, and runs the worker
//! until SIGTERM or Ctrl-C.

use splai_telemetry::TelemetryConfig;

// The gateway and worker allocate many small, short-lived objects (JSON values, records);
// mimalloc serves them markedly faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    splai_shared::process::disable_transparent_huge_pages();
    // Dropped at the end of main: spans still buffered are exported then.
    let _telemetry =
        match TelemetryConfig::from_env().and_then(|c| splai_telemetry::init("splai-worker", &c)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        };
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let config = splai_worker::config::Config::from_env()?;
    let deps = splai_worker::build(&config).await?;
    if let Some(addr) = config.metrics_addr {
        let bound = splai_worker::metrics::serve(addr, deps.metrics.clone()).await?;
        tracing::info!(addr = %bound, "serving worker metrics on /metrics");
    }
    tracing::info!(
        worker_id = %deps.gateway.worker_id(),
        gateway = %config.gateway.url,
        backends = ?deps.registration.backends,
        max_parallel = config.gateway.max_parallel,
        "splai-worker starting"
    );
    splai_worker::run(config.gateway, deps, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown requested: no new claims; finishing running tasks");
}
