//! The local all-in-one server: builds state once, nests the routers (gateway, admin, policy,
//! and the OpenAI-compatible one when enabled) under the request-duration middleware, runs the
//! sweeper, the webhook deliverer and (with `SPLAI_JOB_TTL`) retention, and shuts down
//! gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::serve::ListenerExt;
use splai_shared::artifacts::ArtifactUpload;
use splai_shared::aws::SharedSdk;
use splai_shared::clock::{Clock, SystemClock};
use splai_shared::engine::Engine;
use splai_shared::planner::Planner;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{self, AppState};
use crate::http_metrics::HttpMetrics;
use crate::openai::{self, OpenAiState};
use crate::policy::{self, PolicyState};
use crate::retention::Retention;
use crate::webhooks::deliver::Deliverer;

/// Opens the backends (running migrations) and builds the engine; an AWS backend takes its
/// SDK configuration from `aws`, loaded once for all of them.
///
/// # Errors
/// Backends that cannot be opened.
pub async fn build_engine(
    config: &Config,
    clock: Arc<dyn Clock>,
    aws: &SharedSdk,
) -> anyhow::Result<Arc<Engine>> {
    let backends = splai_shared::backends::open(&config.backends, aws)
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

/// What a process serving SPLAI builds once (at start-up, or at a Lambda cold start) and every
/// request then shares: the engine, the handlers' state, the webhook deliverer.
pub struct Built {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The gateway's state (the other routers' state is made from it).
    pub state: AppState,
    /// Sends webhook deliveries that are due.
    pub deliverer: Arc<Deliverer>,
    /// Turns the state's `shutdown` to `true`, ending open event streams and long polls.
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// Opens the backends and the artifact store (one AWS SDK load shared by all of them) and
/// builds the engine, the handlers' state and the webhook deliverer.
///
/// # Errors
/// Backends or an artifact store that cannot be opened, or settings that do not fit together.
pub async fn build(config: &Config, clock: Arc<dyn Clock>) -> anyhow::Result<Built> {
    let aws = SharedSdk::default();
    let engine = build_engine(config, clock.clone(), &aws).await?;
    let webhooks = Arc::new(config.webhooks.clone());
    let deliverer = Arc::new(Deliverer::new(
        engine.backends().webhooks.clone(),
        clock,
        webhooks.clone(),
    )?);
    let artifacts = config
        .artifact_backend
        .open(&config.artifact_root, &config.artifact_s3, &aws)
        .await
        .context("opening the artifact store (SPLAI_ARTIFACT_BACKEND)")?;
    let upload_signer = match config.artifact_upload {
        ArtifactUpload::Direct => None,
        ArtifactUpload::Presigned => Some(artifacts.signer.clone().context(
            "SPLAI_ARTIFACT_UPLOAD=presigned needs a store that presigns uploads (s3, minio)",
        )?),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let state = AppState {
        engine: engine.clone(),
        artifacts: artifacts.store,
        upload_signer,
        max_inline_output_bytes: config.max_inline_output_bytes,
        shutdown,
        snapshot_streams: false,
        auth: config.auth.clone(),
        webhooks,
    };
    Ok(Built {
        engine,
        state,
        deliverer,
        stop,
    })
}

/// Which routes an application serves: every router (the local server), or the router of one
/// Lambda function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// The gateway, admin and policy routers, the API document, and the OpenAI-compatible
    /// routes when enabled.
    All,
    /// The gateway's routes, the API document, and the OpenAI-compatible routes when enabled.
    Gateway,
    /// The admin routes (dead letters, audit, metrics, prefetch).
    Admin,
    /// The policy routes.
    Policy,
}

/// The HTTP application serving `routes`, with its layers: the routers built from `state`,
/// the settings of `config` (body limit, requeue guards, OpenAI compatibility).
pub fn app(routes: Routes, state: AppState, config: &Config) -> Router {
    let requeue = Arc::new(config.admin_requeue.clone());
    let admin = || {
        admin::router(AdminState {
            engine: state.engine.clone(),
            auth: state.auth.clone(),
            requeue: requeue.clone(),
        })
    };
    let policy = || {
        policy::router(PolicyState {
            engine: state.engine.clone(),
            auth: state.auth.clone(),
        })
    };
    let http_metrics = HttpMetrics::new(state.engine.metrics().registry());
    let gateway = || {
        let openai = config.openai_compat.then(|| {
            openai::router(OpenAiState {
                app: state.clone(),
                timeout: config.openai_timeout,
            })
        });
        let docs = crate::openapi::router(crate::openapi::document(openai.is_some()));
        let mut app = gateway::router(state.clone()).merge(docs);
        if let Some(openai) = openai {
            app = app.merge(openai);
        }
        app
    };
    let app = match routes {
        Routes::All => gateway().merge(admin()).merge(policy()),
        Routes::Gateway => gateway(),
        Routes::Admin => admin(),
        Routes::Policy => policy(),
    };
    app.fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
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

/// How often the local server prunes jobs past `SPLAI_JOB_TTL`: a TTL is hours or days, so a
/// minute late is nothing, and each pass costs a query even when nothing is due.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// One retention pass; failures are retried next tick.
pub async fn prune_once(engine: &Engine, retention: &Retention) {
    if let Err(e) = retention.prune_once(engine).await {
        tracing::warn!(error = %e, "pruning failed; retrying next tick");
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
    let Built {
        engine,
        state,
        deliverer,
        stop: stop_tx,
    } = build(&config, clock).await?;
    let stop_rx = state.shutdown.clone();
    let state_artifacts = state.artifacts.clone();
    let app = app(Routes::All, state, &config);
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
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
    let retention = config
        .job_ttl
        .map(|ttl| Arc::new(Retention::new(state_artifacts.clone(), ttl)));
    let pruning = tokio::spawn({
        let (engine, stop_rx) = (engine.clone(), stop_rx.clone());
        async move {
            let Some(retention) = retention else { return };
            every(RETENTION_INTERVAL, wait_true(stop_rx), move || {
                let (engine, retention) = (engine.clone(), retention.clone());
                async move { prune_once(&engine, &retention).await }
            })
            .await;
        }
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
        pruning.await.context("retention task")?;
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
