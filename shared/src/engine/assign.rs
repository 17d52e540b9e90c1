//! Workers: registration, heartbeats with lease renewal, and claiming assignments.

use std::time::Duration;

use foldhash::{HashMap, HashMapExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Engine, EngineError, rules};
use crate::domain::{
    Constraints, Heartbeat, JobId, Lease, LeaseId, Priority, Resources, Status, TaskId, TaskRef,
    TaskType, TenantId, Timestamp, Worker, WorkerCaps, WorkerId, WorkerRegistration,
};
use crate::store::LeaseRenewal;

/// A task handed to a worker under a lease: the wire contract of the assignment endpoint, read
/// by the worker with the same type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    /// The job.
    pub job_id: JobId,
    /// The task.
    pub task_id: TaskId,
    /// Quote in heartbeats and the report.
    pub lease_id: LeaseId,
    /// When the lease runs out unless renewed by a heartbeat.
    #[serde(with = "crate::domain::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires: Timestamp,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Retries allowed after the first attempt.
    pub max_retries: u32,
    /// Which executor to run.
    #[serde(rename = "type")]
    pub task_type: TaskType,
    /// Executor inputs, with `dep:<task_id>:output_uri` for each dependency.
    pub inputs: Map<String, Value>,
    /// Soft timeout in seconds.
    pub timeout_sec: u32,
    /// Host resources.
    pub resources: Resources,
    /// Placement constraints (backend and model to use).
    pub constraints: Constraints,
    /// The job's tenant.
    pub tenant: TenantId,
    /// The job's priority class.
    pub priority: Priority,
    /// The job's type.
    pub job_type: String,
    /// The job's requested model.
    pub model: Option<String>,
    /// The W3C `traceparent` of the job's submit request: the worker's execution span is its
    /// child, so one trace runs from submit to the last task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Where to put the output when it is stored as an artifact
    /// (`SPLAI_ARTIFACT_UPLOAD=presigned` on the gateway): the worker uses it whatever its own
    /// artifact settings, so it needs no storage credentials. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_upload: Option<crate::artifacts::UploadUrl>,
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    /// Leases extended.
    pub renewed: Vec<TaskRef>,
    /// Tasks to stop: their job was canceled or failed.
    pub cancel: Vec<TaskRef>,
    /// Leases no longer held (expired and possibly given to another worker): stop and drop.
    pub lost: Vec<TaskRef>,
}

impl Engine {
    /// Registers (or re-registers) a worker.
    ///
    /// # Errors
    /// Store failures.
    pub async fn register_worker(
        &self,
        id: &WorkerId,
        reg: &WorkerRegistration,
    ) -> Result<(), EngineError> {
        self.backends
            .workers
            .register_worker(id, reg, self.clock.now())
            .await?;
        self.caps_cache
            .put(id, WorkerCaps::of(id, reg), tokio::time::Instant::now());
        Ok(())
    }

    /// All workers with their health.
    ///
    /// # Errors
    /// Store failures.
    pub async fn list_workers(&self) -> Result<Vec<Worker>, EngineError> {
        let stale_before = self.clock.now() - self.config.worker_stale_after;
        Ok(self.backends.workers.list_workers(stale_before).await?)
    }

    /// Records a heartbeat and renews the leases the worker holds.
    ///
    /// # Errors
    /// `NotFound` for an unregistered worker, and backend failures.
    #[tracing::instrument(level = "info", skip_all, name = "engine.heartbeat")]
    pub async fn heartbeat(
        &self,
        id: &WorkerId,
        load: &Heartbeat,
        leases: &[LeaseRenewal],
    ) -> Result<HeartbeatReply, EngineError> {
        let now = self.clock.now();
        if !self
            .backends
            .workers
            .record_heartbeat(id, load, now)
            .await?
        {
            return Err(EngineError::NotFound(format!(
                "worker {id} is not registered"
            )));
        }
        let mut reply = HeartbeatReply::default();
        if leases.is_empty() {
            return Ok(reply);
        }
        let until = now + self.config.lease;
        let ids: Vec<LeaseId> = leases.iter().map(|l| l.lease_id.clone()).collect();
        let held = self.backends.queue.renew(&ids, until).await?;
        let (kept, lost): (Vec<_>, Vec<_>) = leases
            .iter()
            .cloned()
            .partition(|l| held.contains(&l.lease_id));
        reply.lost.extend(lost.into_iter().map(|l| l.task));
        let statuses = self.backends.jobs.renew_leases(&kept, until).await?;
        let mut finished = Vec::new();
        for (lease, status) in kept.into_iter().zip(statuses) {
            match status {
                Some(Status::Running) => reply.renewed.push(lease.task),
                Some(_) => {
                    finished.push(lease.lease_id);
                    reply.cancel.push(lease.task);
                }
                None => reply.lost.push(lease.task),
            }
        }
        self.metrics.renewed(id.as_str(), reply.renewed.len());
        if !finished.is_empty() {
            // The task is over in the store; its entry has no further use.
            self.backends.queue.ack(&finished).await?;
            self.metrics.acked(id.as_str(), finished.len());
        }
        Ok(reply)
    }

    /// Takes back leases a worker hands in unfinished (it is shutting down): each task is
    /// queued again at once, its attempt not counted, rather than waiting for the lease to
    /// expire. Leases the worker does not hold are ignored. Returns each lease's outcome in
    /// request order.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn release(
        &self,
        worker: &WorkerId,
        leases: &[LeaseRenewal],
    ) -> Result<Vec<rules::ReleaseOutcome>, EngineError> {
        let now = self.clock.now();
        let done = self
            .update_each(
                leases,
                |l| &l.task.job_id,
                (rules::ReleaseOutcome::NotFound, 0),
                |record, l, fx| {
                    let acks = fx.ack.len();
                    let o = rules::release(record, &l.task.task_id, &l.lease_id, worker, now, fx);
                    (o, fx.ack.len() - acks)
                },
            )
            .await?;
        self.metrics
            .acked(worker.as_str(), done.iter().map(|(_, acks)| acks).sum());
        let out: Vec<rules::ReleaseOutcome> = done.into_iter().map(|(o, _)| o).collect();
        if out.contains(&rules::ReleaseOutcome::Released) {
            // The entries are claimable again.
            self.work_ready.notify_waiters();
        }
        Ok(out)
    }

    /// Leases up to `max` tasks to the worker, waiting up to `wait` for work to appear.
    ///
    /// # Errors
    /// `NotFound` for an unregistered worker, and backend failures.
    #[tracing::instrument(level = "info", skip_all, name = "engine.assign")]
    pub async fn assign(
        &self,
        id: &WorkerId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Assignment>, EngineError> {
        let caps = self.worker_caps(id).await?;
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_wait);
        loop {
            // Register interest before looking, so a dispatch in between is not missed.
            let notified = self.work_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The same for work dispatched by other processes, where the queue can tell.
            let external = self
                .external_wake
                .as_deref()
                .map(tokio::sync::Notify::notified);
            tokio::pin!(external);
            if let Some(n) = external.as_mut().as_pin_mut() {
                n.enable();
            }
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = self
                .try_assign(&caps, max, wait)
                .await
                .inspect_err(|_| self.metrics.assignment_error(id.as_str()))?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            // Wake on new work, or periodically for entries whose backoff has run out.
            let nap = (deadline - now).min(self.config.poll_interval);
            let woken = async {
                match external.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            };
            let _ = tokio::time::timeout(nap, async {
                tokio::select! {
                    () = notified => {}
                    () = woken => {}
                }
            })
            .await;
        }
    }

    /// A registered worker's capabilities, from a short-lived cache: a busy worker claims
    /// many times a second, and re-reading its registration each time costs a read.
    async fn worker_caps(&self, id: &WorkerId) -> Result<WorkerCaps, EngineError> {
        let now = tokio::time::Instant::now();
        if let Some(caps) = self.caps_cache.get(id, now) {
            return Ok(caps);
        }
        let stale_before = self.clock.now() - self.config.worker_stale_after;
        let worker = self.backends.workers.get_worker(id, stale_before).await?;
        let worker = worker
            .ok_or_else(|| EngineError::NotFound(format!("worker {id} is not registered")))?;
        let caps = WorkerCaps::of(id, &worker.registration);
        self.caps_cache.put(id, caps.clone(), now);
        Ok(caps)
    }

    /// One claim (which a long-polling queue may spend up to `wait` on), then the leases
    /// started in the store.
    async fn try_assign(
        &self,
        caps: &WorkerCaps,
        max: usize,
        mut wait: std::time::Duration,
    ) -> Result<Vec<Assignment>, EngineError> {
        let mut out = Vec::new();
        // Stale entries are acked and the claim repeated, a bounded number of times.
        for _ in 0..4 {
            let want = max.saturating_sub(out.len());
            if want == 0 {
                break;
            }
            let (started, claimed, refused) = match self.claim_started(caps, want).await? {
                Some((started, claimed)) => (started, claimed, 0),
                None => {
                    let leases = self
                        .backends
                        .queue
                        .claim_waiting(caps, want, self.config.lease, self.clock.now(), wait)
                        .await?;
                    // Only the first claim waits; and the claim may have waited, so read the
                    // time after.
                    wait = std::time::Duration::ZERO;
                    let now = self.clock.now();
                    if leases.is_empty() {
                        break;
                    }
                    self.metrics.claimed(worker_label(caps), leases.len());
                    let claimed = leases.len();
                    let (started, refused) = self.start_leases(caps, leases, now).await?;
                    (started, claimed, refused)
                }
            };
            // Refused entries went back to the queue: claiming again would find them again.
            let stale = claimed - started.len() - refused;
            out.extend(started);
            if stale == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Claims and starts in one store transaction ([`JobStore::claim_and_update`]) when the
    /// queue shares the store's database and no policy gates assignments (the policy's
    /// decisions need the claimed tenants' running counts first). Stale leases are acked in
    /// the same transaction. Returns the assignments in claim order and how many leases the
    /// claim took; `None` when the store cannot do this.
    ///
    /// [`JobStore::claim_and_update`]: crate::store::JobStore::claim_and_update
    async fn claim_started(
        &self,
        caps: &WorkerCaps,
        want: usize,
    ) -> Result<Option<(Vec<Assignment>, usize)>, EngineError> {
        if self.policy.is_some() {
            return Ok(None);
        }
        let now = self.clock.now();
        let claim = crate::store::ClaimRequest {
            worker: caps,
            max: want,
            lease_for: self.config.lease,
            now,
        };
        let mut tracked = super::Tracked::new(self, want);
        let leases = self
            .backends
            .jobs
            .claim_and_update(&claim, &mut |record, leases| {
                tracked.apply(record, |record, fx| {
                    let mut started = Vec::with_capacity(leases.len());
                    for &lease in leases {
                        if rules::start(record, lease, now) {
                            started.extend(to_assignment(record, lease));
                        } else {
                            // Its task is no longer waiting to run.
                            fx.ack.push(lease.lease_id.clone());
                        }
                    }
                    started
                })
            })
            .await?;
        let Some(leases) = leases else {
            return Ok(None);
        };
        let by_job = tracked.finish(self).await?;
        if leases.is_empty() {
            return Ok(Some((Vec::new(), 0)));
        }
        let worker = worker_label(caps);
        self.metrics.claimed(worker, leases.len());
        // Leases of jobs the store no longer has were not seen by the rule: acked here.
        let missing: Vec<LeaseId> = leases
            .iter()
            .filter(|l| !by_job.contains_key(&l.entry.job_id))
            .map(|l| l.lease_id.clone())
            .collect();
        let accepted = by_job
            .into_values()
            .flatten()
            .map(|a| (a.lease_id.clone(), a))
            .collect();
        let (out, stale) = self.in_claim_order(&leases, accepted, now);
        if !missing.is_empty() {
            self.backends.queue.ack(&missing).await?;
        }
        self.metrics.acked(worker, stale.len());
        Ok(Some((out, leases.len())))
    }

    /// Marks the claimed tasks running in the store; acks the stale leases and releases those
    /// the policy refuses. Keeps the queue's claim order; returns the count released.
    async fn start_leases(
        &self,
        caps: &WorkerCaps,
        leases: Vec<Lease>,
        now: Timestamp,
    ) -> Result<(Vec<Assignment>, usize), EngineError> {
        let mut by_job: HashMap<JobId, Vec<&Lease>> = HashMap::with_capacity(leases.len());
        for l in &leases {
            by_job.entry(l.entry.job_id.clone()).or_default().push(l);
        }
        let ids: Vec<JobId> = by_job.keys().cloned().collect();
        // With a policy: each task is checked against the rules and its tenant's
        // `max_running_tasks`; refused ones are handed back to the queue untouched.
        let policy = self.policy.clone();
        let mut counts = self
            .running_tasks(leases.iter().map(|l| l.entry.tenant.clone()))
            .await?;
        let started = self
            .update(&ids, |record, _fx| {
                let job = record.job.job_id.clone();
                let mut accepted = Vec::new();
                let mut refused = Vec::new();
                let mut decisions = Vec::new();
                for lease in by_job.get(&job).into_iter().flatten() {
                    if let Some(p) = policy.as_deref()
                        && record
                            .task(&lease.entry.task_id)
                            .is_some_and(|t| t.status == Status::Queued)
                        && let Some(d) = super::policy::decide_assignment(
                            p,
                            record,
                            &lease.entry.task_id,
                            caps,
                            counts.get_mut(&record.job.tenant),
                        )
                    {
                        let allowed = d.allowed;
                        decisions.push((
                            record.job.tenant.clone(),
                            format!("{}/{}", job, lease.entry.task_id),
                            d,
                        ));
                        if !allowed {
                            refused.push(lease.lease_id.clone());
                            continue;
                        }
                    }
                    if rules::start(record, lease, now) {
                        accepted.extend(to_assignment(record, lease));
                    }
                }
                (accepted, refused, decisions)
            })
            .await?;
        let mut accepted = HashMap::with_capacity(leases.len());
        let mut refused = std::collections::HashSet::new();
        let mut decisions = Vec::new();
        for (a, r, d) in started.into_values() {
            accepted.extend(a.into_iter().map(|a: Assignment| (a.lease_id.clone(), a)));
            refused.extend(r);
            decisions.extend(d);
        }
        for (tenant, resource, d) in &decisions {
            self.audit_assignment(caps, tenant, resource.clone(), d)
                .await;
        }
        let (out, left) = self.in_claim_order(&leases, accepted, now);
        let (back, stale): (Vec<LeaseId>, Vec<LeaseId>) = left
            .into_iter()
            .map(|l| l.lease_id.clone())
            .partition(|id| refused.contains(id));
        let refused = back.len();
        if !back.is_empty() {
            // Left for other workers (or for later, once the tenant's tasks finish).
            self.backends.queue.release(&back).await?;
        }
        if !stale.is_empty() {
            self.backends.queue.ack(&stale).await?;
            self.metrics.acked(worker_label(caps), stale.len());
        }
        Ok((out, refused))
    }

    /// The started assignments in the claim's order, each counted as a task started; and the
    /// leases that started nothing.
    fn in_claim_order<'l>(
        &self,
        leases: &'l [Lease],
        mut accepted: HashMap<LeaseId, Assignment>,
        now: Timestamp,
    ) -> (Vec<Assignment>, Vec<&'l Lease>) {
        let mut out = Vec::with_capacity(accepted.len());
        let mut left = Vec::new();
        for lease in leases {
            match accepted.remove(&lease.lease_id) {
                Some(a) => {
                    self.metrics
                        .task_started(a.task_type.as_str(), lease.entry.not_before, now);
                    out.push(a);
                }
                None => left.push(lease),
            }
        }
        (out, left)
    }
}

/// Workers' capabilities for a few seconds, so claims need not re-read registrations. A
/// re-registration through another gateway instance is seen when the entry ages out.
#[derive(Default)]
pub(super) struct CapsCache {
    // A std mutex: lookups are short and never await.
    entries: std::sync::Mutex<HashMap<WorkerId, (WorkerCaps, tokio::time::Instant)>>,
}

/// How long cached capabilities are trusted.
const CAPS_TTL: Duration = Duration::from_secs(5);

impl CapsCache {
    fn get(&self, id: &WorkerId, now: tokio::time::Instant) -> Option<WorkerCaps> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(id)
            .filter(|(_, at)| now.duration_since(*at) < CAPS_TTL)
            .map(|(caps, _)| caps.clone())
    }

    fn put(&self, id: &WorkerId, caps: WorkerCaps, now: tokio::time::Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(id.clone(), (caps, now));
    }
}

/// The worker label of a claim.
fn worker_label(caps: &WorkerCaps) -> &str {
    caps.worker_id.as_ref().map_or("unknown", WorkerId::as_str)
}

fn to_assignment(record: &crate::domain::JobRecord, lease: &Lease) -> Option<Assignment> {
    let t = record.task(&lease.entry.task_id)?;
    Some(Assignment {
        job_id: t.job_id.clone(),
        task_id: t.task_id.clone(),
        lease_id: lease.lease_id.clone(),
        lease_expires: lease.expires_at,
        attempt: t.attempt,
        max_retries: t.max_retries,
        task_type: t.task_type,
        inputs: t.inputs.clone(),
        timeout_sec: t.timeout_sec,
        resources: t.resources.clone(),
        constraints: t.constraints.clone(),
        tenant: t.tenant.clone(),
        priority: t.priority,
        job_type: record.job.job_type.clone(),
        model: record.job.model.clone(),
        traceparent: record.job.trace_parent.clone(),
        output_upload: None,
    })
}
