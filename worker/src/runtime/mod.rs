//! The worker's loops: register, claim in batches under a parallelism limit, heartbeat with
//! the held leases, report in batches, and shut down without losing or stranding work.

mod backoff;
mod execute;
mod registry;
mod reporter;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use splai_shared::artifacts::ArtifactStore;
use splai_shared::domain::{WorkerId, WorkerRegistration};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::backoff::Backoff;
use self::registry::{Registry, Stop};
use self::reporter::Reports;
use crate::client::{GatewayClient, GatewayError, Registered};
use crate::config::GatewayConfig;
use crate::executor::Executors;

/// Most tasks one claim asks for (the gateway's limit).
const MAX_CLAIM: usize = 256;

/// How long undelivered reports and hand-backs are retried at shutdown.
const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// What the worker runs with, built once by `main` (or by `splai dev`).
pub struct Deps {
    /// The gateway.
    pub gateway: GatewayClient,
    /// The executors.
    pub executors: Executors,
    /// Where outputs are stored.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// What the worker registers with; refreshed by `inventory` when models change.
    pub registration: WorkerRegistration,
    /// Re-reads the model inventory after a `model_download`.
    pub inventory: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// The worker's metrics (the model backends record into the same ones).
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

/// State every loop shares.
pub(crate) struct Shared {
    gateway: GatewayClient,
    executors: Executors,
    artifacts: Arc<dyn ArtifactStore>,
    registry: Registry,
    reports: Reports,
    worker_id: WorkerId,
    retry_max: Duration,
    registration: Mutex<WorkerRegistration>,
    inventory: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    inventory_changed: Notify,
    /// This worker's inline-output limit; the gateway's, learnt at registration, caps it.
    configured_max_inline: usize,
    max_inline: AtomicUsize,
    metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl Shared {
    /// Adopts the gateway's limits (a gateway that names none takes no inline outputs).
    fn accept_limits(&self, registered: &Registered) {
        let inline = registered
            .max_inline_output
            .map_or(0, |g| g.min(self.configured_max_inline));
        self.max_inline.store(inline, Ordering::Relaxed);
    }

    fn registration(&self) -> WorkerRegistration {
        self.registration
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Runs the worker until `shutdown` resolves, then stops claiming, lets running tasks finish
/// within the grace period, hands the rest back, flushes reports and returns.
///
/// # Errors
/// None at present: gateway failures are retried forever, so the worker never silently
/// stops consuming; the signature leaves room for start-up checks.
pub async fn run(
    config: GatewayConfig,
    deps: Deps,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reports, report_rx) = Reports::channel();
    let shared = Arc::new(Shared::new(&config, deps, reports));
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let Some(registered) = register(&shared, &stop).await else {
        return Ok(());
    };
    let every = config.heartbeat.min(registered.heartbeat_interval);
    let background = Background::start(&shared, report_rx, every);
    let slots = Arc::new(Semaphore::new(config.max_parallel));
    let tracker = TaskTracker::new();
    claim_loop(&shared, &config, &slots, &tracker, &stop).await;

    // Shutdown: claiming has stopped. Running tasks get the grace period to finish.
    let all = u32::try_from(config.max_parallel).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(config.shutdown_grace, slots.acquire_many(all)).await;
    if drained.is_err() {
        let n = shared.registry.stop_all_running(Stop::HandBack);
        tracing::info!(
            tasks = n,
            "grace period over; handing unfinished tasks back"
        );
    }
    tracker.close();
    tracker.wait().await;
    background.finish(&shared).await;
    tracing::info!("worker stopped");
    Ok(())
}

impl Shared {
    fn new(config: &GatewayConfig, deps: Deps, reports: Reports) -> Self {
        Self {
            worker_id: deps.gateway.worker_id().clone(),
            gateway: deps.gateway,
            executors: deps.executors,
            artifacts: deps.artifacts,
            registry: Registry::default(),
            reports,
            retry_max: config.retry_max,
            registration: Mutex::new(deps.registration),
            inventory: deps.inventory,
            inventory_changed: Notify::new(),
            configured_max_inline: config.max_inline_output,
            // Nothing inline until the gateway has said what it accepts.
            max_inline: AtomicUsize::new(0),
            metrics: deps.metrics,
        }
    }
}

/// The reporter and the heartbeat loop, which outlive claiming: reports are flushed and
/// leases renewed until the very end of a shutdown.
struct Background {
    reporter: tokio::task::JoinHandle<()>,
    heartbeats: tokio::task::JoinHandle<()>,
    closing: CancellationToken,
    give_up: CancellationToken,
    stop_heartbeats: CancellationToken,
}

impl Background {
    fn start(
        shared: &Arc<Shared>,
        report_rx: tokio::sync::mpsc::UnboundedReceiver<crate::client::Report>,
        heartbeat_every: Duration,
    ) -> Self {
        let (closing, give_up, stop_heartbeats) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let reporter = tokio::spawn(reporter::deliver_reports(
            shared.clone(),
            report_rx,
            closing.clone(),
            give_up.clone(),
        ));
        let heartbeats = tokio::spawn(heartbeat_loop(
            shared.clone(),
            heartbeat_every,
            stop_heartbeats.clone(),
        ));
        Self {
            reporter,
            heartbeats,
            closing,
            give_up,
            stop_heartbeats,
        }
    }

    /// Once every task has ended: flushes the reports (for at most [`FLUSH_DEADLINE`]), hands
    /// back what was stopped unfinished, then stops heartbeating.
    async fn finish(mut self, shared: &Shared) {
        self.closing.cancel();
        let deadline = Instant::now() + FLUSH_DEADLINE;
        if tokio::time::timeout_at(deadline, &mut self.reporter)
            .await
            .is_err()
        {
            self.give_up.cancel();
            let _ = (&mut self.reporter).await;
        }
        hand_back(shared, deadline).await;
        self.stop_heartbeats.cancel();
        let _ = self.heartbeats.await;
    }
}

/// Registers until it succeeds; `None` when `stop` fired first.
async fn register(shared: &Shared, stop: &CancellationToken) -> Option<Registered> {
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.retry_max);
    loop {
        match shared.gateway.register(&shared.registration()).await {
            Ok(registered) => {
                shared.accept_limits(&registered);
                tracing::info!(worker_id = %shared.worker_id, "registered with the gateway");
                return Some(registered);
            }
            Err(e) => {
                log_retry(backoff.failures(), &e, "registration failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// Claims as many tasks as there are free slots, long-polling, until `stop` fires.
async fn claim_loop(
    shared: &Arc<Shared>,
    config: &GatewayConfig,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), shared.retry_max);
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            () = stop.cancelled() => return,
        };
        // Invariant: the semaphore is never closed.
        let mut permits = vec![first.expect("slots are never closed")];
        while permits.len() < MAX_CLAIM {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let asked_at = Instant::now();
        let claimed = tokio::select! {
            r = shared.gateway.claim(permits.len(), config.assignment_wait) => r,
            () = stop.cancelled() => return,
        };
        match claimed {
            Ok(tasks) if tasks.is_empty() => {
                backoff.reset();
                drop(permits);
                // A gateway that did not long-poll is polled no faster than SPLAI_POLL_MILLIS.
                tokio::select! {
                    () = tokio::time::sleep_until(asked_at + config.poll) => {}
                    () = stop.cancelled() => return,
                }
            }
            Ok(tasks) => {
                backoff.reset();
                for (task, permit) in tasks.into_iter().zip(permits) {
                    let (lease, cancel) = shared.registry.insert(&task);
                    let span = execute::span(&task);
                    tracker.spawn(
                        execute::execute(shared.clone(), task, lease, cancel, permit)
                            .instrument(span),
                    );
                }
            }
            Err(GatewayError::NotRegistered(_)) => {
                drop(permits);
                tracing::warn!("the gateway forgot this worker; registering again");
                if register(shared, stop).await.is_none() {
                    return;
                }
            }
            Err(e) => {
                drop(permits);
                log_retry(backoff.failures(), &e, "claiming tasks failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Heartbeats with every held lease, stopping the tasks the gateway says to stop, and
/// re-registers when the model inventory changes or the gateway forgot the worker.
async fn heartbeat_loop(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The interval paces retries; this only counts a streak of failures for the log.
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shared.inventory_changed.notified() => {
                refresh_inventory(&shared).await;
                continue;
            }
            () = stop.cancelled() => return,
        }
        let leases = shared.registry.leases();
        let load = crate::sysinfo::load(shared.registry.running());
        match shared.gateway.heartbeat(&load, &leases).await {
            Ok(reply) => {
                failures = 0;
                for t in &reply.cancel {
                    shared.registry.stop(t, Stop::Canceled);
                }
                for t in &reply.lost {
                    shared.registry.stop(t, Stop::Lost);
                }
                if !reply.cancel.is_empty() || !reply.lost.is_empty() {
                    tracing::info!(
                        cancel = reply.cancel.len(),
                        lost = reply.lost.len(),
                        "stopping tasks"
                    );
                }
            }
            Err(GatewayError::NotRegistered(_)) => {
                match shared.gateway.register(&shared.registration()).await {
                    Ok(registered) => shared.accept_limits(&registered),
                    Err(e) => tracing::warn!(error = %e, "re-registration failed"),
                }
            }
            Err(e) => {
                log_retry(failures, &e, "heartbeat failed");
                failures += 1;
            }
        }
    }
}

async fn refresh_inventory(shared: &Shared) {
    let models = (shared.inventory)();
    let reg = {
        let mut reg = shared
            .registration
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        reg.models = models;
        reg.clone()
    };
    match shared.gateway.register(&reg).await {
        Ok(registered) => {
            shared.accept_limits(&registered);
            tracing::info!(models = ?reg.models, "model inventory updated");
        }
        Err(e) => tracing::warn!(error = %e, "could not update the model inventory"),
    }
}

/// Hands leases stopped at shutdown back to the gateway, so their tasks are requeued now
/// rather than when the leases expire.
async fn hand_back(shared: &Shared, deadline: Instant) {
    let leases = shared.registry.handed_back();
    if leases.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        match shared.gateway.release(&leases).await {
            Ok(()) => {
                tracing::info!(tasks = leases.len(), "handed unfinished tasks back");
                return;
            }
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                log_retry(backoff.failures(), &e, "handing tasks back failed");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, tasks = leases.len(), "could not hand tasks back; their leases will expire");
                return;
            }
        }
    }
}

/// Logs the first failure of a streak and then every tenth, so an outage is visible without
/// flooding the log.
fn log_retry(failures_before: u32, e: &GatewayError, what: &str) {
    if failures_before.is_multiple_of(10) {
        tracing::warn!(error = %e, failures = failures_before + 1, "{what}; retrying");
    }
}
