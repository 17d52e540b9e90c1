//! The local all-in-one server: builds state once, nests the routers (gateway, admin, policy,
//! and the OpenAI-compatible one when enabled) under the request-duration middleware, runs the
//! sweeper and the webhook deliverer, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use splai_shared::artifacts::ArtifactUpload;
use splai_shared::clock::{Clock, SystemClock};
use splai_shared::engine::Engine;
use splai_shared::planner::Planner;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::admin::deadletter::RequeueGuards;
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{self, AppState};
use crate::http_metrics::HttpMetrics;
use crate::openai::{self, OpenAiState};
use crate::policy::{self, PolicyState};
use crate::webhooks::deliver::Deliverer;

/// Opens the backends (running migrations) and builds the engine.
///
/// # Errors
/// Backends that cannot be opened.
pub async fn build_engine(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Arc<Engine>> {
    let backends = splai_shared::backends::open(&config.backends)
        .await
        .with_context(|| {
            format!(
                "opening SPLAI_STORE={} SPLAI_QUEUE={}",
                config.backends.store, config.backends.queue
            )
        })?;
    let planner = Planner::new(config.planner.clone()).with_routing(config.routing.clone());
    Ok(Arc::new(
        Engine::new(backends, planner, clock, config.engine.clone())
            .with_policy(config.policy.clone()),
    ))
}

/// The whole HTTP application with its layers; `openai_timeout`, when set, serves the
/// OpenAI-compatible routes with that timeout (`SPLAI_OPENAI_COMPAT=true`).
pub fn app(
    state: AppState,
    requeue: Arc<RequeueGuards>,
    max_body_bytes: usize,
    openai_timeout: Option<Duration>,
) -> Router {
    let admin = admin::router(AdminState {
        engine: state.engine.clone(),
        auth: state.auth.clone(),
        requeue,
    });
    let policy = policy::router(PolicyState {
        engine: state.engine.clone(),
        auth: state.auth.clone(),
    });
    let http_metrics = HttpMetrics::new(state.engine.metrics().registry());
    let openai = openai_timeout.map(|timeout| {
        openai::router(OpenAiState {
            app: state.clone(),
            timeout,
        })
    });
    let docs = crate::openapi::router(crate::openapi::document(openai.is_some()));
    let mut app = gateway::router(state)
        .merge(admin)
        .merge(policy)
        .merge(docs);
    if let Some(openai) = openai {
        app = app.merge(openai);
    }
    app.fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        // Outermost, so panics (as 500s) are counted; `Router::layer` runs after routing, so
        // the matched route template is known.
        .layer(axum::middleware::from_fn_with_state(
            http_metrics,
            crate::http_metrics::track,
        ))
}

/// One span per request, a child of the caller's span when it sent a W3C `traceparent`. The
/// path, not the route: spans may carry ids, metrics labels may not.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.uri().path(),
    );
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    splai_telemetry::set_parent(&span, parent);
    span
}

/// A 500 for a panicking handler; the panic message goes to the log, not to the client.
fn panic_response(payload: Box<dyn std::any::Any + Send>) -> axum::response::Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    let cause = format!("handler panicked: {message}");
    axum::response::IntoResponse::into_response(ApiError::internal(&cause))
}

/// Runs `pass` every `every` (a slow pass delays the next rather than piling up) until
/// `shutdown` resolves: the background work of the local server, which a Lambda deployment
/// runs as scheduled invocations instead.
pub async fn every<F, Fut>(every: Duration, shutdown: impl Future<Output = ()>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => pass().await,
        }
    }
}

/// One sweep: requeues expired leases, reconciles and relays the outbox; failures are retried
/// next tick.
pub async fn sweep_once(engine: &Engine) {
    match engine.sweep().await {
        Ok(r) if r.requeued + r.dead_lettered + r.relayed > 0 => tracing::info!(?r, "sweep"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next tick"),
    }
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The engine behind it.
    pub engine: Arc<Engine>,
    /// Resolves when the server has stopped.
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// How long in-flight requests (long-polls included) may take to finish after a shutdown
/// signal before the server stops anyway. Nothing is lost by cutting them: leases expire.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Binds, then serves until `shutdown` resolves, draining in-flight requests.
///
/// # Errors
/// Backends that cannot be opened, or an address that cannot be bound.
pub async fn start(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let engine = build_engine(&config, clock.clone()).await?;
    let webhooks = Arc::new(config.webhooks.clone());
    let deliverer = Arc::new(Deliverer::new(
        engine.backends().webhooks.clone(),
        clock,
        webhooks.clone(),
    )?);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let artifacts = config
        .artifact_backend
        .open(&config.artifact_root, &config.artifact_s3)
        .await
        .context("opening the artifact store (SPLAI_ARTIFACT_BACKEND)")?;
    let upload_signer = match config.artifact_upload {
        ArtifactUpload::Direct => None,
        ArtifactUpload::Presigned => Some(artifacts.signer.clone().context(
            "SPLAI_ARTIFACT_UPLOAD=presigned needs a store that presigns uploads (s3, minio)",
        )?),
    };
    let state = AppState {
        engine: engine.clone(),
        artifacts: artifacts.store,
        upload_signer,
        max_inline_output_bytes: config.max_inline_output_bytes,
        shutdown: stop_rx.clone(),
        auth: config.auth.clone(),
        webhooks,
    };
    let app = app(
        state,
        Arc::new(config.admin_requeue.clone()),
        config.max_body_bytes,
        config.openai_compat.then_some(config.openai_timeout),
    );
    let sweeper = tokio::spawn({
        let engine = engine.clone();
        every(
            config.sweep_interval,
            wait_true(stop_rx.clone()),
            move || {
                let engine = engine.clone();
                async move { sweep_once(&engine).await }
            },
        )
    });
    // Webhooks go out on the sweeper's cadence; a delivery's own due time decides when.
    let delivering = tokio::spawn(every(
        config.sweep_interval,
        wait_true(stop_rx.clone()),
        move || {
            let deliverer = deliverer.clone();
            async move { deliverer.deliver_once().await }
        },
    ));
    let handle = tokio::spawn(async move {
        // No Nagle delay: small JSON answers (a claim, a report) must leave at once.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let deadline = async move {
            wait_true(stop_rx).await;
            tokio::time::sleep(DRAIN_GRACE).await;
        };
        tokio::select! {
            served = serve => served.context("serving HTTP")?,
            () = deadline => tracing::warn!("requests still open after the drain grace period; stopping"),
        }
        sweeper.await.context("sweeper task")?;
        delivering.await.context("webhook deliverer task")?;
        Ok(())
    });
    Ok(Running {
        addr,
        engine,
        handle,
    })
}

async fn wait_true(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves with the real clock until Ctrl-C or SIGTERM.
///
/// # Errors
/// Start-up failures, or the server failing while running.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config, Arc::new(SystemClock), shutdown_signal()).await?;
    tracing::info!(addr = %running.addr, "splai gateway listening");
    eprintln!("splai listening on http://{}", running.addr);
    running.handle.await.context("server task")?
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested; draining");
}
