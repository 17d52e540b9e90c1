//! The AWS Lambda functions: `gateway`, `admin` and `policy` each serve one router through
//! `lambda_http` (an axum `Router` is the service it runs), and `sweeper` runs one sweeper
//! pass ([`crate::sweeper`]) per scheduled event. State (backends and their SDK clients,
//! configuration, the policy and routing files) is built once per cold start, before the
//! first event, never per request. API Gateway stage prefixes are stripped by the function's
//! `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH=true`, not by code.
//!
//! Under Lambda a response cannot stay open past API Gateway's 30 s, so long polls are capped
//! at [`LAMBDA_MAX_WAIT`] and job event streams answer with a snapshot for the client to poll
//! (see `gateway/stream.rs`); nothing runs between requests, so the sweeper function does
//! what the local server's background loops do.
//!
//! Outside Lambda (no `AWS_LAMBDA_RUNTIME_API`) the same binaries serve their router on
//! `SPLAI_GATEWAY_PORT`, or run one sweep and print what it did: for debugging, and for cron.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use splai_shared::clock::SystemClock;
use splai_telemetry::TelemetryConfig;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::retention::Retention;
use crate::server::{self, Routes};
use crate::sweeper::Sweeper;

/// The longest long-poll a function allows (`wait_seconds` above it is cut to it): below API
/// Gateway's 30 s integration timeout, so a worker's claim is answered, not cut off.
pub const LAMBDA_MAX_WAIT: Duration = Duration::from_secs(20);

/// One of the functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Serves the routes of one router.
    Http(Routes),
    /// Runs a sweeper pass per event.
    Sweeper,
}

/// Whether this process runs under the Lambda runtime (or its emulator, `cargo lambda watch`).
pub fn in_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

/// The whole of a function binary's `main`: logging, then the function until the runtime
/// stops it; a start-up failure is printed and fails the process (Lambda logs it and reports
/// the init error).
pub async fn main(name: &'static str, function: Function) -> ExitCode {
    splai_shared::process::disable_transparent_huge_pages();
    let _telemetry = match TelemetryConfig::from_env().and_then(|c| splai_telemetry::init(name, &c))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let run = match function {
        Function::Http(routes) => serve(routes).await,
        Function::Sweeper => sweep().await,
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `routes`: through the Lambda runtime, or on `SPLAI_GATEWAY_PORT` outside it.
///
/// # Errors
/// Start-up failures (configuration, backends), or the runtime failing.
pub async fn serve(routes: Routes) -> anyhow::Result<()> {
    let lambda = in_lambda();
    let mut config = Config::from_env()?;
    if lambda {
        config.engine.max_wait = config.engine.max_wait.min(LAMBDA_MAX_WAIT);
    }
    let built = server::build(&config, Arc::new(SystemClock)).await?;
    let mut state = built.state;
    state.snapshot_streams = lambda;
    let app = server::app(routes, state, &config);
    // Held for the life of the process: a dropped sender would end every event stream.
    let _stop = built.stop;
    if lambda {
        return lambda_http::run(app)
            .await
            .map_err(|e| anyhow::anyhow!("the Lambda runtime failed: {e}"));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    eprintln!(
        "{routes:?} function listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(server::shutdown_signal())
        .await
        .context("serving HTTP")
}

/// Runs a sweeper pass per event through the Lambda runtime, or one pass outside it, printing
/// its outcome as JSON.
///
/// # Errors
/// Start-up failures, the runtime failing, or (outside Lambda) the pass failing.
pub async fn sweep() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let built = server::build(&config, Arc::new(SystemClock)).await?;
    let mut sweeper = Sweeper::new(built.engine, built.deliverer, config.sweep_lock);
    if let Some(ttl) = config.job_ttl {
        sweeper = sweeper.with_retention(Retention::new(built.state.artifacts.clone(), ttl));
    }
    let sweeper = Arc::new(sweeper);
    if !in_lambda() {
        let outcome = sweeper.run_once().await?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    let handler =
        lambda_runtime::service_fn(move |_: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let sweeper = sweeper.clone();
            async move {
                let outcome = sweeper.run_once().await.map_err(|e| {
                    tracing::warn!(error = %e, "sweep failed; the next one goes on");
                    lambda_runtime::Error::from(format!("{e:#}"))
                })?;
                tracing::info!(?outcome, "sweep");
                Ok::<_, lambda_runtime::Error>(serde_json::to_value(outcome)?)
            }
        });
    lambda_runtime::run(handler)
        .await
        .map_err(|e| anyhow::anyhow!("the Lambda runtime failed: {e}"))
}
