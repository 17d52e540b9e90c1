//! The execution engine: submit, assign under leases, report, retry, cancel, sweep.
//!
//! Decisions live in [`rules`] as pure functions on a [`JobRecord`]; this module only loads,
//! applies, commits through the store, then carries out the queue effects (acks commit with the
//! change instead when the queue shares the store's database) and publishes events.
//! Every queue effect is safe to lose or repeat: the store is the truth, and a claim of an entry
//! the store no longer considers runnable is simply acked away.

mod assign;
mod chunks;
mod control;
pub mod events;
pub mod metrics;
mod policy;
mod report;
pub mod rules;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use tokio::sync::{Mutex, Notify, broadcast};

pub use assign::{Assignment, HeartbeatReply};
pub use control::SweepReport;
pub use events::JobEvent;
pub use report::ReportResult;
pub use rules::{ReleaseOutcome, Report, ReportOutcome, TaskDefaults};
pub use submit::Submitted;

use crate::clock::Clock;
use crate::domain::{JobId, JobRecord, QueueEntry};
use crate::planner::{PlanError, Planner};
use crate::queue::{LeaseQueue, QueueError};
use crate::store::{
    AuditLog, DispatchOutbox, JobStore, QueueWrites, RunLocks, StoreError, WebhookOutbox,
    WorkerStore,
};
use rules::Effects;

/// Engine tunables, with the defaults documented in the README.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lease length (`SPLAI_LEASE_SECONDS`, 15 s).
    pub lease: Duration,
    /// Interval workers are told to heartbeat at (`SPLAI_HEARTBEAT_SECONDS`, 5 s).
    pub heartbeat_interval: Duration,
    /// A worker silent this long is reported stale (3 heartbeats).
    pub worker_stale_after: Duration,
    /// First retry delay (`SPLAI_RETRY_BASE_MS`, 1 s).
    pub retry_base: Duration,
    /// Longest retry delay (`SPLAI_RETRY_MAX_MS`, 60 s).
    pub retry_max: Duration,
    /// Task defaults (`SPLAI_DEFAULT_MAX_RETRIES` 3, `SPLAI_DEFAULT_TASK_TIMEOUT_SECONDS` 300).
    pub task_defaults: TaskDefaults,
    /// Longest long-poll a claimer may ask for (`SPLAI_MAX_WAIT_SECONDS`, 30 s).
    pub max_wait: Duration,
    /// How often a long-poll re-checks for entries whose backoff ran out.
    pub poll_interval: Duration,
    /// A ready task waiting this long is checked against the queue, and enqueued again if
    /// the queue lost it (`SPLAI_RECONCILE_AFTER_SECONDS`, 60 s).
    pub reconcile_after: Duration,
    /// Distinct values a free-form metric label (tenant, job type, worker id) may take
    /// before further ones are counted under `other` (`SPLAI_METRICS_LABEL_CAP`, 100).
    pub metrics_label_cap: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            worker_stale_after: Duration::from_secs(15),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            task_defaults: TaskDefaults {
                max_retries: 3,
                timeout_sec: 300,
            },
            max_wait: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            reconcile_after: Duration::from_secs(60),
            metrics_label_cap: crate::metrics::DEFAULT_LABEL_CAP,
        }
    }
}

/// Errors the engine reports to callers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The request is invalid; the message says how.
    #[error("{0}")]
    Invalid(String),
    /// The submitted or planned DAG is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The addressed job, task or worker does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The backends the engine drives.
#[derive(Clone)]
pub struct Backends {
    /// Jobs and tasks.
    pub jobs: Arc<dyn JobStore>,
    /// Workers.
    pub workers: Arc<dyn WorkerStore>,
    /// The outbox of entries bound for an external queue.
    pub outbox: Arc<dyn DispatchOutbox>,
    /// The lease queue.
    pub queue: Arc<dyn LeaseQueue>,
    /// The tamper-evident audit log.
    pub audit: Arc<dyn AuditLog>,
    /// Webhook deliveries owed by terminal jobs (the same store as `jobs`, which writes them).
    pub webhooks: Arc<dyn WebhookOutbox>,
    /// Named run locks (the scheduled sweeper's), in the same store.
    pub locks: Arc<dyn RunLocks>,
}

/// What a rule did to one job, kept until its transaction commits.
struct Applied<R> {
    result: R,
    effects: Effects,
    events: Vec<JobEvent>,
    /// The job's new status, type and tenant, when its status changed.
    new_status: Option<(crate::domain::Status, String, crate::domain::TenantId)>,
    dispatched: bool,
}

/// A rule's results per job while its store transaction runs: what each run of the rule did,
/// keyed by job so that a backend re-running a job's rule overwrites rather than duplicates.
struct Tracked<R> {
    results: HashMap<JobId, Applied<R>>,
    /// Events are built only for live subscribers: diffing needs a copy of every record.
    watched: bool,
    /// Acks commit with the change when the queue shares the store's database.
    acks_with_changes: bool,
}

impl<R> Tracked<R> {
    fn new(engine: &Engine, jobs: usize) -> Self {
        Tracked {
            results: HashMap::with_capacity(jobs),
            watched: engine.events.receiver_count() > 0,
            acks_with_changes: engine.backends.jobs.acks_with_changes(),
        }
    }

    /// Runs `rule` on one record for the store, and returns what it asks of the queue.
    fn apply(
        &mut self,
        record: &mut JobRecord,
        rule: impl FnOnce(&mut JobRecord, &mut Effects) -> R,
    ) -> QueueWrites {
        let before = self.watched.then(|| record.clone());
        let status_before = record.job.status;
        let mut fx = Effects::default();
        let result = rule(record, &mut fx);
        let events = match &before {
            Some(before) => events::diff(before, record),
            None => Vec::new(),
        };
        let new_status = (record.job.status != status_before).then(|| {
            let j = &record.job;
            (j.status, j.job_type.clone(), j.tenant.clone())
        });
        let enqueue = std::mem::take(&mut fx.enqueue);
        let ack = if self.acks_with_changes {
            std::mem::take(&mut fx.ack)
        } else {
            Vec::new()
        };
        let applied = Applied {
            result,
            effects: fx,
            events,
            new_status,
            dispatched: !enqueue.is_empty(),
        };
        self.results.insert(record.job.job_id.clone(), applied);
        QueueWrites { enqueue, ack }
    }

    /// After the commit: counts the status changes, publishes the events, carries out the
    /// queue effects and wakes claimers for dispatched entries. Returns each job's result.
    async fn finish(self, engine: &Engine) -> Result<HashMap<JobId, R>, EngineError> {
        let mut effects = Effects::default();
        let mut out = HashMap::with_capacity(self.results.len());
        let mut dispatched = false;
        for (id, a) in self.results {
            effects.extend(a.effects);
            dispatched |= a.dispatched;
            if let Some((status, job_type, tenant)) = &a.new_status {
                engine
                    .metrics
                    .job_finished(*status, job_type, tenant.as_str());
            }
            for ev in a.events {
                let _ = engine.events.send(Arc::new(ev));
            }
            out.insert(id, a.result);
        }
        engine.carry_out(effects).await?;
        if dispatched {
            // The store transaction dispatched ready entries: relay them if they went to the
            // outbox, and wake claimers either way.
            engine.after_dispatch().await;
        }
        Ok(out)
    }
}

/// The execution engine. Cheap to share behind an `Arc`.
pub struct Engine {
    backends: Backends,
    planner: Planner,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    events: broadcast::Sender<Arc<JobEvent>>,
    chunk_wake: broadcast::Sender<Arc<crate::domain::TaskRef>>,
    work_ready: Notify,
    /// The queue's wake-ups from other processes ([`LeaseQueue::wake_source`]), if any.
    external_wake: Option<Arc<Notify>>,
    relay_lock: Mutex<()>,
    metrics: metrics::EngineMetrics,
    caps_cache: assign::CapsCache,
    last_reconcile: std::sync::Mutex<Option<crate::domain::Timestamp>>,
    policy: Option<Arc<crate::policy::Policy>>,
}

impl Engine {
    /// An engine over these backends.
    pub fn new(
        backends: Backends,
        planner: Planner,
        clock: Arc<dyn Clock>,
        config: EngineConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (chunk_wake, _) = broadcast::channel(1024);
        let external_wake = backends.queue.wake_source();
        let registry = Arc::new(crate::metrics::Registry::new(config.metrics_label_cap));
        let metrics = metrics::EngineMetrics::new(registry, backends.queue.backend_name());
        Self {
            backends,
            planner,
            clock,
            config,
            events,
            chunk_wake,
            work_ready: Notify::new(),
            external_wake,
            relay_lock: Mutex::new(()),
            metrics,
            caps_cache: assign::CapsCache::default(),
            last_reconcile: std::sync::Mutex::new(None),
            policy: None,
        }
    }

    /// The planner (and through it the routing table).
    pub fn planner(&self) -> &Planner {
        &self.planner
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Now, by the engine's clock: for stamping records made beside the engine (audit events).
    pub fn now(&self) -> crate::domain::Timestamp {
        self.clock.now()
    }

    /// The backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The engine's metrics (and through them the process's registry).
    pub fn metrics(&self) -> &metrics::EngineMetrics {
        &self.metrics
    }

    /// Live job events; a lagging receiver should re-read the job.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.events.subscribe()
    }

    /// Checks both backends answer.
    ///
    /// # Errors
    /// The first backend error.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.backends.jobs.ping().await?;
        self.backends.queue.ping().await?;
        Ok(())
    }

    /// Applies `rule` to each job atomically, then carries out its effects and publishes the
    /// events. Returns each found job's result.
    async fn update<R: Send>(
        &self,
        ids: &[JobId],
        mut rule: impl FnMut(&mut JobRecord, &mut Effects) -> R + Send,
    ) -> Result<HashMap<JobId, R>, EngineError> {
        let mut tracked = Tracked::new(self, ids.len());
        self.backends
            .jobs
            .update_jobs(ids, &mut |record| tracked.apply(record, &mut rule))
            .await?;
        tracked.finish(self).await
    }

    /// Applies `rule` to every item within its job's record (one [`Engine::update`] over all
    /// their jobs) and returns each item's result in input order; items of a job that does
    /// not exist get `missing`.
    async fn update_each<T: Sync, O: Clone + Send>(
        &self,
        items: &[T],
        job_of: impl Fn(&T) -> &JobId,
        missing: O,
        mut rule: impl FnMut(&mut JobRecord, &T, &mut Effects) -> O + Send,
    ) -> Result<Vec<O>, EngineError> {
        let mut by_job: HashMap<JobId, Vec<usize>> = HashMap::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            by_job.entry(job_of(item).clone()).or_default().push(i);
        }
        let ids: Vec<JobId> = by_job.keys().cloned().collect();
        let done = self
            .update(&ids, |record, fx| {
                let idx = by_job
                    .get(&record.job.job_id)
                    .map_or(&[][..], Vec::as_slice);
                idx.iter()
                    .map(|&i| (i, rule(record, &items[i], fx)))
                    .collect::<Vec<_>>()
            })
            .await?;
        let mut out = vec![missing; items.len()];
        for (i, o) in done.into_values().flatten() {
            out[i] = o;
        }
        Ok(out)
    }

    /// Queue operations decided by rules, after their transaction committed. Losing any of
    /// them (a crash right here) is safe: leases expire and stale entries are acked at claim.
    async fn carry_out(&self, fx: Effects) -> Result<(), EngineError> {
        // Acks and nacks are counted by the callers, which know the worker.
        let q = &self.backends.queue;
        if !fx.ack.is_empty() {
            q.ack(&fx.ack).await?;
        }
        if !fx.release.is_empty() {
            q.release(&fx.release).await?;
        }
        if !fx.nack.is_empty() {
            q.nack(&fx.nack).await?;
        }
        if !fx.dead_letter.is_empty() {
            q.dead_letter(&fx.dead_letter, self.clock.now()).await?;
            self.metrics.dead_lettered(fx.dead_letter.len());
        }
        if !fx.discard.is_empty() {
            q.discard(&fx.discard).await?;
        }
        Ok(())
    }

    /// Moves outbox entries to the queue (a no-op when the queue shares the store's
    /// database) and wakes long-polling claimers. Runs after the change committed, so a
    /// queue that cannot take the entries now does not fail the request: they wait in the
    /// outbox for the sweeper's relay, and the caller must not be told (and retry) otherwise.
    async fn after_dispatch(&self) {
        if let Err(e) = self.relay_outbox().await {
            tracing::warn!(error = %e, "relaying the outbox failed; the sweeper will retry");
        }
        self.work_ready.notify_waiters();
    }

    /// Drains the outbox into the queue. Returns how many entries moved.
    ///
    /// # Errors
    /// Store or queue failures; undelivered entries stay in the outbox for the next relay.
    pub async fn relay_outbox(&self) -> Result<usize, EngineError> {
        // One relay at a time per process, so entries are not enqueued twice needlessly
        // (twice would still be safe: enqueue replaces).
        let _guard = self.relay_lock.lock().await;
        let mut moved = 0;
        loop {
            let batch = self.backends.outbox.pending_dispatch(500).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            let (ids, entries): (Vec<i64>, Vec<QueueEntry>) = batch.into_iter().unzip();
            self.backends.queue.enqueue(&entries).await?;
            self.backends.outbox.mark_dispatched(&ids).await?;
            moved += ids.len();
        }
    }
}
