//! The engine's metrics: the original's queue counters with their labels, plus jobs, task
//! wait and run times, lease renewals, queue depth and workers. Recorded after each change
//! commits (a rule re-run by an optimistic store is counted once), rendered by the admin
//! router from [`EngineMetrics::registry`].

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Timestamp, Worker, WorkerHealth};
use crate::metrics::{Counter, Gauge, Histogram, Label, Registry, SECONDS_BUCKETS};
use crate::queue::QueueDepth;

use crate::metrics::Label::{Capped, Fixed};

/// Why a failed attempt's lease went back to the queue (`queue_nacked_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackReason {
    /// A retryable failure with attempts left: pending again after a backoff.
    Retryable,
    /// A retryable failure on the last allowed attempt: dead-lettered.
    Exhausted,
    /// A failure no retry can fix: dead-lettered at once.
    Permanent,
}

impl NackReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retryable => "retryable",
            Self::Exhausted => "exhausted",
            Self::Permanent => "permanent",
        }
    }
}

/// The engine's metric families, registered once in its [`Registry`].
#[derive(Debug)]
pub struct EngineMetrics {
    registry: Arc<Registry>,
    backend: String,
    jobs_submitted: Counter,
    jobs_completed: Counter,
    jobs_failed: Counter,
    jobs_canceled: Counter,
    claimed: Counter,
    acked: Counter,
    nacked: Counter,
    expired_requeued: Counter,
    dead_lettered: Counter,
    dead_letter_requeued: Counter,
    dead_letter_count: Gauge,
    assignment_errors: Counter,
    lease_renewals: Counter,
    reports_duplicate: Counter,
    reports_stale: Counter,
    task_wait: Histogram,
    task_run: Histogram,
    queue_depth: Gauge,
    queue_leased: Gauge,
    workers: Gauge,
}

const JOB: &[Label] = &[Capped("job_type"), Capped("tenant")];
const BY_WORKER: &[Label] = &[Fixed("queue_backend"), Capped("worker_id")];
const BACKEND: &[Label] = &[Fixed("queue_backend")];

impl EngineMetrics {
    /// Registers the engine's families in `registry`, labelled with `queue_backend`.
    pub fn new(registry: Arc<Registry>, queue_backend: &str) -> Self {
        let r = &registry;
        let m = Self {
            backend: queue_backend.to_owned(),
            jobs_submitted: r.counter("jobs_submitted_total", "Jobs accepted.", JOB),
            jobs_completed: r.counter("jobs_completed_total", "Jobs that completed.", JOB),
            jobs_failed: r.counter("jobs_failed_total", "Jobs that failed.", JOB),
            jobs_canceled: r.counter("jobs_canceled_total", "Jobs canceled.", JOB),
            claimed: r.counter(
                "queue_claimed_total",
                "Queue entries leased to workers.",
                BY_WORKER,
            ),
            acked: r.counter(
                "queue_acked_total",
                "Leases acknowledged (task finished, or the entry was stale).",
                BY_WORKER,
            ),
            nacked: r.counter(
                "queue_nacked_total",
                "Failed attempts handed back to the queue: retryable (pending again after a \
                 backoff), exhausted (last attempt, dead-lettered), permanent (dead-lettered).",
                &[Fixed("queue_backend"), Capped("worker_id"), Fixed("reason")],
            ),
            expired_requeued: r.counter(
                "queue_expired_requeued_total",
                "Leases that ran out (worker died or stalled) and went back to the queue.",
                BACKEND,
            ),
            dead_lettered: r.counter(
                "dead_letter_total",
                "Entries moved to the dead letters (failed for good, or expired on the last \
                 attempt).",
                BACKEND,
            ),
            dead_letter_requeued: r.counter(
                "dead_letter_requeued_total",
                "Dead letters requeued by an operator.",
                BACKEND,
            ),
            dead_letter_count: r.gauge(
                "dead_letter_count",
                "Entries in the dead letters now.",
                BACKEND,
            ),
            assignment_errors: r.counter(
                "scheduler_assignment_errors_total",
                "Assignment requests that failed on a backend error.",
                BY_WORKER,
            ),
            lease_renewals: r.counter(
                "lease_renewals_total",
                "Leases extended by worker heartbeats.",
                BY_WORKER,
            ),
            reports_duplicate: r.counter(
                "reports_duplicate_total",
                "Reports repeating an applied idempotency key (ignored).",
                &[],
            ),
            reports_stale: r.counter(
                "reports_stale_total",
                "Reports for a lease no longer current (ignored).",
                &[],
            ),
            task_wait: r.histogram(
                "task_wait_seconds",
                "Time from a task becoming ready (or its retry backoff ending) to its start.",
                &[Fixed("task_type")],
                SECONDS_BUCKETS,
            ),
            task_run: r.histogram(
                "task_run_seconds",
                "Time from a task's start to its worker's report, by outcome.",
                &[Fixed("task_type"), Fixed("outcome")],
                SECONDS_BUCKETS,
            ),
            queue_depth: r.gauge(
                "queue_depth",
                "Entries waiting to be claimed, by priority class.",
                &[Fixed("queue_backend"), Fixed("priority")],
            ),
            queue_leased: r.gauge("queue_leased", "Entries leased to workers now.", BACKEND),
            workers: r.gauge(
                "workers",
                "Registered workers by health.",
                &[Fixed("health")],
            ),
            registry: registry.clone(),
        };
        // Series without free-form labels exist from the start, so rates and alerts see a 0.
        let b = [m.backend.as_str()];
        for c in [
            &m.expired_requeued,
            &m.dead_lettered,
            &m.dead_letter_requeued,
        ] {
            c.add(&b, 0);
        }
        m.reports_duplicate.add(&[], 0);
        m.reports_stale.add(&[], 0);
        m
    }

    /// The registry holding these families (and any the caller adds, such as HTTP's).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Each counter's total over all its labels, by name (for tests and summaries).
    pub fn totals(&self) -> std::collections::BTreeMap<String, u64> {
        self.registry.snapshot().counter_totals()
    }

    /// The queue backend label value.
    pub fn queue_backend(&self) -> &str {
        &self.backend
    }

    pub(super) fn job_submitted(&self, job_type: &str, tenant: &str) {
        self.jobs_submitted.inc(&[job_type, tenant]);
    }

    pub(super) fn job_finished(&self, status: crate::domain::Status, job_type: &str, tenant: &str) {
        use crate::domain::Status;
        let c = match status {
            Status::Completed => &self.jobs_completed,
            Status::Failed => &self.jobs_failed,
            Status::Canceled => &self.jobs_canceled,
            _ => return,
        };
        c.inc(&[job_type, tenant]);
    }

    pub(super) fn claimed(&self, worker: &str, n: usize) {
        self.claimed.add(&[&self.backend, worker], n as u64);
    }

    pub(super) fn acked(&self, worker: &str, n: usize) {
        if n > 0 {
            self.acked.add(&[&self.backend, worker], n as u64);
        }
    }

    pub(super) fn nacked(&self, worker: &str, reason: NackReason) {
        self.nacked.inc(&[&self.backend, worker, reason.as_str()]);
    }

    pub(super) fn expired(&self, requeued: usize, dead_lettered: usize) {
        self.expired_requeued.add(&[&self.backend], requeued as u64);
        self.dead_lettered
            .add(&[&self.backend], dead_lettered as u64);
    }

    pub(super) fn dead_lettered(&self, n: usize) {
        self.dead_lettered.add(&[&self.backend], n as u64);
    }

    pub(super) fn dead_letters_requeued(&self, n: usize) {
        self.dead_letter_requeued.add(&[&self.backend], n as u64);
    }

    pub(super) fn assignment_error(&self, worker: &str) {
        self.assignment_errors.inc(&[&self.backend, worker]);
    }

    pub(super) fn renewed(&self, worker: &str, n: usize) {
        if n > 0 {
            self.lease_renewals.add(&[&self.backend, worker], n as u64);
        }
    }

    pub(super) fn report_ignored(&self, duplicate: bool) {
        let c = if duplicate {
            &self.reports_duplicate
        } else {
            &self.reports_stale
        };
        c.inc(&[]);
    }

    pub(super) fn task_started(&self, task_type: &str, ready_at: Timestamp, now: Timestamp) {
        self.task_wait
            .observe(&[task_type], seconds(now - ready_at));
    }

    pub(super) fn task_ran(
        &self,
        task_type: &str,
        outcome: &str,
        started: Timestamp,
        now: Timestamp,
    ) {
        self.task_run
            .observe(&[task_type, outcome], seconds(now - started));
    }

    /// Sets the gauges read from the backends at scrape time.
    pub fn set_depth(&self, depth: &QueueDepth) {
        let b = self.backend.as_str();
        for (p, n) in [
            ("interactive", depth.interactive),
            ("standard", depth.standard),
            ("batch", depth.batch),
        ] {
            self.queue_depth.set(&[b, p], count(n));
        }
        self.queue_leased.set(&[b], count(depth.leased));
        self.dead_letter_count.set(&[b], count(depth.dead));
    }

    /// Sets the worker gauge from the current list.
    pub fn set_workers(&self, workers: &[Worker]) {
        for (health, name) in [
            (WorkerHealth::Healthy, "healthy"),
            (WorkerHealth::Stale, "stale"),
        ] {
            let n = workers.iter().filter(|w| w.health == health).count();
            self.workers.set(&[name], count(n));
        }
    }
}

fn count(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

/// A duration in seconds; a negative one (clock skew between processes) counts as zero.
fn seconds(d: time::Duration) -> f64 {
    Duration::try_from(d).map_or(0.0, |d| d.as_secs_f64())
}
