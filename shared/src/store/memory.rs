//! In-memory store for tests and `SPLAI_STORE=memory`. Nothing survives a restart.
//!
//! It always dispatches through its outbox, so the memory pair exercises the same relay path
//! that an external queue uses in production.

mod audit;
mod chunks;
mod locks;
mod prune;
mod webhooks;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

pub use self::audit::MemoryAuditLog;

use super::{
    ApplyFn, CreateOutcome, DispatchOutbox, JobFilter, JobPage, JobStore, LeaseRenewal,
    NewJobWrite, StoreError, TaskFilter, TaskPage, WorkerStore,
};
use crate::domain::{
    Heartbeat, IdempotencyKey, Job, JobId, JobRecord, LeaseId, QueueEntry, Status, TaskChunk,
    TaskRef, TenantId, Timestamp, Worker, WorkerHealth, WorkerId, WorkerRegistration,
};

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, (u64, JobRecord)>,
    by_seq: BTreeMap<u64, JobId>,
    next_seq: u64,
    idempotency: HashMap<(TenantId, IdempotencyKey), (JobId, String)>,
    workers: BTreeMap<WorkerId, Worker>,
    outbox: BTreeMap<i64, QueueEntry>,
    next_outbox: i64,
    webhooks: webhooks::Deliveries,
    chunks: chunks::Chunks,
    /// Run locks: name to (holder, deadline).
    locks: HashMap<String, (String, Timestamp)>,
}

impl State {
    fn push_outbox(&mut self, entries: &[QueueEntry]) {
        for e in entries {
            self.next_outbox += 1;
            self.outbox.insert(self.next_outbox, e.clone());
        }
    }
}

/// Jobs, workers and outbox held in process memory.
#[derive(Default)]
pub struct MemoryStore {
    // A std mutex: no critical section awaits, and each is a handful of map operations.
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Poisoning would mean a panic inside a map operation; the state is still consistent
        // per operation, so keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn with_health(mut w: Worker, stale_before: Timestamp) -> Worker {
    w.health = if w.last_heartbeat < stale_before {
        WorkerHealth::Stale
    } else {
        WorkerHealth::Healthy
    };
    w
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create_jobs(
        &self,
        jobs: &[NewJobWrite<'_>],
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        let mut s = self.lock();
        // All or none: a job id already taken fails the batch before anything is written.
        if let Some(taken) = jobs
            .iter()
            .find(|j| s.jobs.contains_key(&j.record.job.job_id))
        {
            return Err(StoreError::Conflict(format!(
                "job {} already exists",
                taken.record.job.job_id
            )));
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        for j in jobs {
            if let Some(claim) = j.idempotency {
                let key = (claim.tenant.clone(), claim.key.clone());
                if let Some((job_id, hash)) = s.idempotency.get(&key) {
                    outcomes.push(CreateOutcome::Replayed {
                        job_id: job_id.clone(),
                        request_hash: hash.clone(),
                    });
                    continue;
                }
                let first = (j.record.job.job_id.clone(), claim.request_hash.clone());
                s.idempotency.insert(key, first);
            }
            s.next_seq += 1;
            let seq = s.next_seq;
            let id = j.record.job.job_id.clone();
            s.by_seq.insert(seq, id.clone());
            s.jobs.insert(id, (seq, j.record.clone()));
            s.push_outbox(j.ready);
            outcomes.push(CreateOutcome::Created);
        }
        Ok(outcomes)
    }

    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError> {
        Ok(self
            .lock()
            .idempotency
            .get(&(tenant.clone(), key.clone()))
            .cloned())
    }

    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(id).map(|(_, r)| r.clone()))
    }

    async fn stale_jobs(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let s = self.lock();
        let mut stale: Vec<(Timestamp, u64, &JobId)> = s
            .jobs
            .values()
            .filter(|(_, r)| {
                !r.job.status.is_terminal()
                    && r.tasks.iter().any(|t| match t.status {
                        Status::Queued => r.job.updated_at < before,
                        Status::Running => t.lease_expires.is_some_and(|e| e < before),
                        _ => false,
                    })
            })
            .map(|(seq, r)| (r.job.updated_at, *seq, &r.job.job_id))
            .collect();
        stale.sort();
        Ok(stale
            .into_iter()
            .take(limit)
            .map(|(_, _, id)| id.clone())
            .collect())
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.lock().jobs.get(id).map(|(_, r)| r.job.clone()))
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        let before = match &filter.cursor {
            Some(c) => c
                .parse::<u64>()
                .map_err(|_| StoreError::NotFound(format!("cursor `{c}`")))?,
            None => u64::MAX,
        };
        let s = self.lock();
        let limit = filter.limit as usize;
        let mut jobs = Vec::new();
        let mut next_cursor = None;
        for (seq, id) in s.by_seq.range(..before).rev() {
            let job = &s.jobs[id].1.job;
            let matches = filter.status.is_none_or(|st| job.status == st)
                && filter.tenant.as_ref().is_none_or(|t| &job.tenant == t)
                && filter.job_type.as_ref().is_none_or(|t| &job.job_type == t);
            if !matches {
                continue;
            }
            if jobs.len() == limit {
                break;
            }
            jobs.push(job.clone());
            next_cursor = Some(seq.to_string());
        }
        // Only hand out a cursor when a further page may exist.
        if jobs.len() < limit {
            next_cursor = None;
        }
        Ok(JobPage { jobs, next_cursor })
    }

    async fn list_tasks(
        &self,
        job_id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, StoreError> {
        let s = self.lock();
        let Some((_, record)) = s.jobs.get(job_id) else {
            return Err(StoreError::NotFound(format!("job {job_id}")));
        };
        let matching: Vec<_> = record
            .tasks
            .iter()
            .filter(|t| filter.status.is_none_or(|st| t.status == st))
            .filter(|t| {
                filter
                    .worker_id
                    .as_ref()
                    .is_none_or(|w| t.worker_id.as_ref() == Some(w))
            })
            .collect();
        let limit = filter.limit.map_or(usize::MAX, |l| l as usize);
        let tasks = matching
            .iter()
            .skip(filter.offset as usize)
            .take(limit)
            .map(|t| (*t).clone())
            .collect();
        Ok(TaskPage {
            total: matching.len() as u64,
            tasks,
        })
    }

    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError> {
        let mut s = self.lock();
        for id in ids {
            let Some((_, record)) = s.jobs.get_mut(id) else {
                continue;
            };
            let before = crate::domain::BeforeChange::of(record);
            let ready = apply(record).enqueue;
            let owed = crate::domain::owed_deliveries(&before, record);
            s.push_outbox(&ready);
            s.webhooks.insert(owed);
        }
        Ok(())
    }

    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError> {
        let mut s = self.lock();
        Ok(renewals
            .iter()
            .map(|r| {
                let (_, record) = s.jobs.get_mut(&r.task.job_id)?;
                let task = record.task_mut(&r.task.task_id)?;
                if task.lease_id.as_ref() != Some(&r.lease_id) {
                    return None;
                }
                if task.status == Status::Running {
                    task.lease_expires = Some(until);
                }
                Some(task.status)
            })
            .collect())
    }

    async fn prune_finished(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        Ok(prune::prune_finished(&mut self.lock(), before, limit))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn append_chunks(
        &self,
        task: &TaskRef,
        lease: &LeaseId,
        first_seq: u32,
        texts: &[String],
    ) -> Result<bool, StoreError> {
        Ok(chunks::append(
            &mut self.lock(),
            task,
            lease,
            first_seq,
            texts,
        ))
    }

    async fn chunks_after(
        &self,
        task: &TaskRef,
        after: i64,
        limit: usize,
    ) -> Result<Vec<TaskChunk>, StoreError> {
        Ok(chunks::after(&self.lock(), task, after, limit))
    }
}

#[async_trait]
impl WorkerStore for MemoryStore {
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let worker = Worker {
            worker_id: id.clone(),
            registration: registration.clone(),
            load: Heartbeat::default(),
            health: WorkerHealth::Healthy,
            registered_at: at,
            last_heartbeat: at,
        };
        self.lock().workers.insert(id.clone(), worker);
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(w) = s.workers.get_mut(id) else {
            return Ok(false);
        };
        w.load = heartbeat.clone();
        w.last_heartbeat = at;
        Ok(true)
    }

    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError> {
        Ok(self
            .lock()
            .workers
            .get(id)
            .cloned()
            .map(|w| with_health(w, stale_before)))
    }

    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError> {
        Ok(self
            .lock()
            .workers
            .values()
            .cloned()
            .map(|w| with_health(w, stale_before))
            .collect())
    }
}

#[async_trait]
impl DispatchOutbox for MemoryStore {
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
        Ok(self
            .lock()
            .outbox
            .iter()
            .take(limit)
            .map(|(id, e)| (*id, e.clone()))
            .collect())
    }

    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for id in ids {
            s.outbox.remove(id);
        }
        Ok(())
    }
}
