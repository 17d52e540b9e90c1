//! Pure state transitions on a job record. Every backend persists what these decide, so the
//! DAG, retry, lease and cancel semantics exist exactly once.

use std::time::Duration;

use serde_json::Value;

use crate::domain::{
    Artifact, Expired, ExpiryOutcome, Job, JobId, JobRecord, Lease, LeaseId, NewJob, QueueEntry,
    Requirements, Status, Task, TaskId, TaskRef, TaskSpec, TenantId, Timestamp, WorkerId,
};

/// Values used where a task spec leaves them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskDefaults {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Soft timeout of one attempt, in seconds.
    pub timeout_sec: u32,
}

/// Queue operations a rule asks for once its store transaction has committed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// Entries the store dispatches in its transaction (not applied by the engine).
    pub enqueue: Vec<QueueEntry>,
    /// Leases whose entries are done with.
    pub ack: Vec<LeaseId>,
    /// Leases handed back unused: pending again at once, the delivery not counted.
    pub release: Vec<LeaseId>,
    /// Leases to return to pending at a later time.
    pub nack: Vec<(LeaseId, Timestamp)>,
    /// Leases to move to the dead letters.
    pub dead_letter: Vec<(LeaseId, String)>,
    /// Tasks whose entries should be dropped in any state.
    pub discard: Vec<TaskRef>,
}

impl Effects {
    /// Folds another job's effects into these.
    pub fn extend(&mut self, other: Effects) {
        self.enqueue.extend(other.enqueue);
        self.ack.extend(other.ack);
        self.release.extend(other.release);
        self.nack.extend(other.nack);
        self.dead_letter.extend(other.dead_letter);
        self.discard.extend(other.discard);
    }
}

/// The stored record of a newly planned job. `specs` must already be a validated DAG.
pub fn build_record(
    job_id: JobId,
    tenant: TenantId,
    new: &NewJob,
    specs: Vec<TaskSpec>,
    defaults: TaskDefaults,
    now: Timestamp,
) -> JobRecord {
    let tasks: Vec<Task> = specs
        .into_iter()
        .map(|s| Task {
            task_id: s.task_id,
            job_id: job_id.clone(),
            tenant: tenant.clone(),
            priority: new.priority,
            task_type: s.task_type,
            inputs: s.inputs,
            dependencies: s.dependencies,
            status: Status::Queued,
            attempt: 0,
            max_retries: s.max_retries.unwrap_or(defaults.max_retries),
            timeout_sec: s.timeout_sec.unwrap_or(defaults.timeout_sec),
            resources: s.resources,
            constraints: s.constraints,
            worker_id: None,
            lease_id: None,
            lease_expires: None,
            output_artifact_uri: None,
            output_artifact: None,
            output: None,
            error: None,
            last_report_key: None,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
        })
        .collect();
    let job = Job {
        job_id,
        tenant,
        job_type: new.job_type.clone(),
        input: new.input.clone(),
        policy: new.policy.clone(),
        priority: new.priority,
        planner_mode: new.planner_mode,
        model: new.model.clone(),
        latency_class: new.latency_class.clone(),
        reasoning_required: new.reasoning_required,
        data_classification: new.data_classification.clone(),
        network_isolation: new.network_isolation.clone(),
        webhook_url: new.webhook_url.clone(),
        metadata: new.metadata.clone(),
        status: Status::Queued,
        message: "queued".to_owned(),
        result_artifact_uri: None,
        task_count: tasks.len() as u32,
        created_at: now,
        updated_at: now,
        finished_at: None,
        trace_parent: new.trace_parent.clone(),
    };
    JobRecord { job, tasks }
}

/// The queue entry for a task that is ready to run.
pub fn entry_for(task: &Task, not_before: Timestamp) -> QueueEntry {
    QueueEntry {
        job_id: task.job_id.clone(),
        task_id: task.task_id.clone(),
        tenant: task.tenant.clone(),
        priority: task.priority,
        requirements: Requirements {
            gpu: task.resources.gpu,
            backend: task.constraints.backend.clone(),
            model: task.constraints.model.clone(),
            worker_id: task.constraints.worker_id.clone(),
        },
        attempt: task.attempt,
        max_attempts: task.max_attempts(),
        not_before,
    }
}

fn deps_completed(record: &JobRecord, task: &Task) -> bool {
    task.dependencies.iter().all(|d| {
        record
            .task(d)
            .is_some_and(|t| t.status == Status::Completed)
    })
}

/// Entries for every queued task whose dependencies have all completed.
pub fn ready_entries(record: &JobRecord, now: Timestamp) -> Vec<QueueEntry> {
    record
        .tasks
        .iter()
        .filter(|t| t.status == Status::Queued && deps_completed(record, t))
        .map(|t| entry_for(t, now))
        .collect()
}

/// Starts a claimed lease's task. Returns `false` (and changes nothing) when the store no
/// longer considers the task runnable, in which case the lease is stale and must be acked.
pub fn start(record: &mut JobRecord, lease: &Lease, now: Timestamp) -> bool {
    if record.job.status.is_terminal() {
        return false;
    }
    let Some(task) = record.task(&lease.entry.task_id) else {
        return false;
    };
    // A running task whose lease has run out may be taken over before the sweeper notices.
    let runnable = task.status == Status::Queued
        || (task.status == Status::Running && task.lease_expires.is_some_and(|e| e <= now));
    if !runnable || !deps_completed(record, task) {
        return false;
    }
    let Some(task) = record.task_mut(&lease.entry.task_id) else {
        return false;
    };
    task.status = Status::Running;
    task.worker_id = lease.worker_id.clone();
    task.lease_id = Some(lease.lease_id.clone());
    task.lease_expires = Some(lease.expires_at);
    task.attempt = lease.entry.attempt;
    task.started_at = Some(now);
    task.updated_at = now;
    if record.job.status == Status::Queued {
        set_job_status(&mut record.job, Status::Running, "running", now);
    }
    true
}

fn set_job_status(job: &mut Job, status: Status, message: impl Into<String>, now: Timestamp) {
    job.status = status;
    job.message = message.into();
    job.updated_at = now;
    job.finished_at = status.is_terminal().then_some(now);
}

/// Cancels every unfinished task and records the job's terminal status.
fn close_job(
    record: &mut JobRecord,
    status: Status,
    message: String,
    now: Timestamp,
    fx: &mut Effects,
) {
    set_job_status(&mut record.job, status, message, now);
    for t in record.tasks.iter_mut().filter(|t| !t.status.is_terminal()) {
        // A running task keeps its lease, so its worker hears "cancel" on the next heartbeat
        // (which acks the lease) rather than "lost"; unheard, the lease simply expires.
        if t.status != Status::Running {
            fx.discard.push(t.task_ref());
        }
        t.status = Status::Canceled;
        t.updated_at = now;
        t.finished_at = Some(now);
    }
}

/// What a worker says about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The task.
    pub task: TaskRef,
    /// The lease the attempt ran under.
    pub lease_id: LeaseId,
    /// Makes the report safe to repeat.
    pub idempotency_key: String,
    /// `Completed` or `Failed`.
    pub status: Status,
    /// Where the output is, on success.
    pub output_artifact_uri: Option<String>,
    /// What the output is (size, type), when the worker says.
    pub output_artifact: Option<Artifact>,
    /// The output itself, when it travels inline.
    pub output: Option<crate::domain::InlineOutput>,
    /// What went wrong, on failure.
    pub error: Option<String>,
    /// `false` for failures that no retry can fix.
    pub retryable: bool,
}

/// What a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The task completed.
    Completed,
    /// The attempt failed; the task runs again at `retry_at`.
    Retrying {
        /// When the next attempt may start.
        retry_at: Timestamp,
    },
    /// The task failed for good, and with it the job.
    Failed,
    /// This idempotency key was already applied; nothing changed.
    Duplicate,
    /// The report's lease is not the task's current lease, or the task or job is finished or
    /// canceled; nothing changed.
    Stale,
    /// No such task.
    NotFound,
}

/// Applies one report. `retry_at` gives the next attempt's start for a retryable failure.
pub fn apply_report(
    record: &mut JobRecord,
    report: &Report,
    now: Timestamp,
    retry_at: impl FnOnce(u32) -> Timestamp,
    fx: &mut Effects,
) -> ReportOutcome {
    let Some(task) = record.task(&report.task.task_id) else {
        return ReportOutcome::NotFound;
    };
    if task.last_report_key.as_deref() == Some(report.idempotency_key.as_str()) {
        fx.ack.push(report.lease_id.clone());
        return ReportOutcome::Duplicate;
    }
    if record.job.status.is_terminal()
        || task.status != Status::Running
        || task.lease_id.as_ref() != Some(&report.lease_id)
    {
        fx.ack.push(report.lease_id.clone());
        return ReportOutcome::Stale;
    }
    match report.status {
        Status::Completed => complete(record, report, now, fx),
        _ => fail(record, report, now, retry_at, fx),
    }
}

fn complete(
    record: &mut JobRecord,
    report: &Report,
    now: Timestamp,
    fx: &mut Effects,
) -> ReportOutcome {
    let id = report.task.task_id.clone();
    let uri = report.output_artifact_uri.clone();
    if let Some(task) = record.task_mut(&id) {
        task.status = Status::Completed;
        task.output_artifact_uri = uri.clone();
        task.output_artifact = report.output_artifact.clone();
        task.output = report.output.clone();
        task.error = None;
        task.last_report_key = Some(report.idempotency_key.clone());
        task.lease_expires = None;
        task.updated_at = now;
        task.finished_at = Some(now);
    }
    fx.ack.push(report.lease_id.clone());

    // Pass the output to dependents and release the ones now ready.
    let key = format!("dep:{id}:output_uri");
    let value = uri.map_or(Value::Null, Value::String);
    let mut released = Vec::new();
    for t in record
        .tasks
        .iter_mut()
        .filter(|t| t.dependencies.contains(&id))
    {
        t.inputs.insert(key.clone(), value.clone());
        t.updated_at = now;
        if t.status == Status::Queued {
            released.push(t.task_id.clone());
        }
    }
    for rid in released {
        if let Some(t) = record.task(&rid).filter(|t| deps_completed(record, t)) {
            fx.enqueue.push(entry_for(t, now));
        }
    }

    if record.tasks.iter().all(|t| t.status == Status::Completed) {
        record.job.result_artifact_uri = final_output(record);
        set_job_status(&mut record.job, Status::Completed, "completed", now);
    }
    ReportOutcome::Completed
}

/// The output of the last task nothing depends on.
fn final_output(record: &JobRecord) -> Option<String> {
    record
        .tasks
        .iter()
        .rev()
        .find(|t| {
            !record
                .tasks
                .iter()
                .any(|o| o.dependencies.contains(&t.task_id))
        })
        .and_then(|t| t.output_artifact_uri.clone())
}

fn fail(
    record: &mut JobRecord,
    report: &Report,
    now: Timestamp,
    retry_at: impl FnOnce(u32) -> Timestamp,
    fx: &mut Effects,
) -> ReportOutcome {
    let error = report
        .error
        .clone()
        .unwrap_or_else(|| "task failed without an error message".into());
    let Some(task) = record.task_mut(&report.task.task_id) else {
        return ReportOutcome::NotFound;
    };
    task.error = Some(error.clone());
    task.last_report_key = Some(report.idempotency_key.clone());
    task.lease_expires = None;
    task.updated_at = now;
    if report.retryable && task.attempt < task.max_attempts() {
        let at = retry_at(task.attempt);
        task.status = Status::Queued;
        task.lease_id = None;
        fx.nack.push((report.lease_id.clone(), at));
        return ReportOutcome::Retrying { retry_at: at };
    }
    fx.dead_letter.push((report.lease_id.clone(), error));
    fail_task(record, &report.task.task_id, now, fx);
    ReportOutcome::Failed
}

/// Marks a task failed for good; the job fails and its unfinished tasks are canceled.
fn fail_task(record: &mut JobRecord, id: &TaskId, now: Timestamp, fx: &mut Effects) {
    let Some(task) = record.task_mut(id) else {
        return;
    };
    task.status = Status::Failed;
    task.updated_at = now;
    task.finished_at = Some(now);
    let message = format!(
        "task {id} failed after {} attempt(s): {}",
        task.attempt,
        task.error.as_deref().unwrap_or("unknown error")
    );
    close_job(record, Status::Failed, message, now, fx);
}

/// Mirrors a lease expiry the queue already carried out.
pub fn apply_expiry(record: &mut JobRecord, expired: &Expired, now: Timestamp, fx: &mut Effects) {
    let id = &expired.lease.entry.task_id;
    let Some(task) = record.task(id) else { return };
    let holds_lease = task.lease_id.as_ref() == Some(&expired.lease.lease_id);
    let live = !record.job.status.is_terminal()
        && (task.status == Status::Queued || (task.status == Status::Running && holds_lease));
    if !live {
        // The task moved on (finished, canceled, or re-leased); the queue entry is leftover.
        if !record.job.status.is_terminal() && task.status == Status::Running {
            return;
        }
        fx.discard.push(task.task_ref());
        return;
    }
    let worker = expired
        .lease
        .worker_id
        .as_ref()
        .map_or("-".to_owned(), |w| w.to_string());
    let Some(task) = record.task_mut(id) else {
        return;
    };
    task.attempt = task.attempt.max(expired.lease.entry.attempt);
    task.error = Some(format!(
        "lease expired on worker {worker} (attempt {})",
        task.attempt
    ));
    task.lease_id = None;
    task.lease_expires = None;
    task.updated_at = now;
    match expired.outcome {
        ExpiryOutcome::Requeued => task.status = Status::Queued,
        ExpiryOutcome::DeadLettered => fail_task(record, id, now, fx),
    }
}

/// What a hand-back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The task is queued again, its attempt not counted.
    Released,
    /// The lease is not the task's current lease held by this worker, or the job is over;
    /// nothing changed.
    Stale,
    /// No such task.
    NotFound,
}

/// Hands a running task back from `worker` unfinished (the worker is shutting down): the task
/// is queued again at once and the attempt it started does not count.
pub fn release(
    record: &mut JobRecord,
    task: &TaskId,
    lease: &LeaseId,
    worker: &WorkerId,
    now: Timestamp,
    fx: &mut Effects,
) -> ReleaseOutcome {
    let Some(t) = record.task(task) else {
        return ReleaseOutcome::NotFound;
    };
    let held = t.status == Status::Running
        && t.lease_id.as_ref() == Some(lease)
        && t.worker_id.as_ref() == Some(worker);
    if record.job.status.is_terminal() {
        // The job is over: the entry has no further use, whoever holds it.
        fx.ack.push(lease.clone());
        return ReleaseOutcome::Stale;
    }
    if !held {
        // Not this worker's lease to give back (it may be another's by now): leave it alone.
        return ReleaseOutcome::Stale;
    }
    let Some(t) = record.task_mut(task) else {
        return ReleaseOutcome::NotFound;
    };
    t.status = Status::Queued;
    t.attempt = t.attempt.saturating_sub(1);
    t.lease_id = None;
    t.lease_expires = None;
    t.started_at = None;
    t.updated_at = now;
    fx.release.push(lease.clone());
    let started = record
        .tasks
        .iter()
        .any(|t| matches!(t.status, Status::Running | Status::Completed));
    if !started {
        set_job_status(&mut record.job, Status::Queued, "queued", now);
    }
    ReleaseOutcome::Released
}

/// Cancels the job. Returns `false` when it had already finished (nothing changed).
pub fn cancel(record: &mut JobRecord, now: Timestamp, fx: &mut Effects) -> bool {
    if record.job.status.is_terminal() {
        return false;
    }
    close_job(
        record,
        Status::Canceled,
        "canceled by request".to_owned(),
        now,
        fx,
    );
    true
}

/// Brings a failed or canceled job back: every unfinished task is queued afresh with its
/// attempts reset. Returns `false` (nothing changed) for a job that is not failed or canceled.
pub fn revive(record: &mut JobRecord, now: Timestamp, fx: &mut Effects) -> bool {
    if !matches!(record.job.status, Status::Failed | Status::Canceled) {
        return false;
    }
    for t in record
        .tasks
        .iter_mut()
        .filter(|t| t.status != Status::Completed)
    {
        t.status = Status::Queued;
        t.attempt = 0;
        t.worker_id = None;
        t.lease_id = None;
        t.lease_expires = None;
        t.last_report_key = None;
        t.started_at = None;
        t.finished_at = None;
        t.updated_at = now;
    }
    let started = record.tasks.iter().any(|t| t.status == Status::Completed);
    let status = if started {
        Status::Running
    } else {
        Status::Queued
    };
    set_job_status(&mut record.job, status, "retried", now);
    record.job.result_artifact_uri = None;
    fx.enqueue.extend(ready_entries(record, now));
    true
}

/// Exponential backoff with jitter: attempt `n` waits between half and all of
/// `base * 2^(n-1)`, capped at `max`. `unit` is a random number in `[0, 1)`.
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    capped.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}
