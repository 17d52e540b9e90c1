//! Submitting jobs and reading them back.

use sha2::{Digest, Sha256};

use super::{Engine, EngineError, JobEvent, rules};
use crate::domain::{IdempotencyKey, Job, JobId, JobRecord, NewJob, TenantId};
use crate::store::{
    CreateOutcome, IdempotencyClaim, JobFilter, JobPage, NewJobWrite, TaskFilter, TaskPage,
};

/// The result of a submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The job.
    pub job_id: JobId,
    /// `true` when an earlier submit with the same idempotency key created the job.
    pub replayed: bool,
}

impl Engine {
    /// Plans and stores a job, dispatching its ready tasks in the same transaction. With an
    /// idempotency key that was used before, returns the first job instead.
    ///
    /// # Errors
    /// `Plan` for an invalid DAG, `Conflict` for a key reused with a different request, and
    /// backend failures.
    #[tracing::instrument(level = "info", skip_all, name = "engine.submit")]
    pub async fn submit(&self, new: NewJob) -> Result<Submitted, EngineError> {
        // One code path for one job and many: a single submit is a batch of one.
        self.submit_many(vec![new])
            .await?
            .pop()
            .unwrap_or_else(|| Err(EngineError::Invalid("job was not processed".into())))
    }

    /// Submits many jobs at once. Each is validated, planned and accepted or rejected on its
    /// own (idempotency keys per job); the accepted ones are written with their ready tasks in
    /// one store call, so a bulk submit costs one transaction on SQLite. Returns each job's
    /// result in order.
    ///
    /// # Errors
    /// A backend failure, in which case no job of the batch was written.
    #[tracing::instrument(level = "info", skip_all, name = "engine.submit_many", fields(jobs = jobs.len()))]
    pub async fn submit_many(
        &self,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Result<Submitted, EngineError>>, EngineError> {
        use futures::StreamExt;

        let mut results: Vec<Option<Result<Submitted, EngineError>>> =
            (0..jobs.len()).map(|_| None).collect();
        let mut to_plan = Vec::with_capacity(jobs.len());
        for (i, new) in jobs.into_iter().enumerate() {
            let tenant = new.tenant.clone().unwrap_or_else(TenantId::default_tenant);
            let claim = new.idempotency_key.as_ref().map(|key| IdempotencyClaim {
                tenant: tenant.clone(),
                key: key.clone(),
                request_hash: request_hash(&new),
            });
            if let Some(claim) = &claim
                && let Some((job_id, hash)) = self
                    .backends
                    .jobs
                    .find_idempotency(&tenant, &claim.key)
                    .await?
            {
                results[i] = Some(replay(claim, job_id, &hash));
                continue;
            }
            to_plan.push((i, tenant, claim, new));
        }
        // In order, a few at a time: templates answer at once, an LLM planner should not see
        // thousands of concurrent calls.
        let planned: Vec<_> = futures::stream::iter(to_plan)
            .map(|(i, tenant, claim, new)| async move {
                let plan = self.planner.plan(&new).await;
                (i, tenant, claim, new, plan)
            })
            .buffered(16)
            .collect()
            .await;
        let now = self.clock.now();
        let mut staged = Vec::with_capacity(planned.len());
        for (i, tenant, claim, new, plan) in planned {
            match plan {
                Err(e) => results[i] = Some(Err(e.into())),
                Ok(specs) => {
                    let id = JobId::generate();
                    let defaults = self.config.task_defaults;
                    let record = rules::build_record(id, tenant, &new, specs, defaults, now);
                    let ready = rules::ready_entries(&record, now);
                    staged.push((i, record, ready, claim));
                }
            }
        }
        let writes: Vec<NewJobWrite<'_>> = staged
            .iter()
            .map(|(_, record, ready, claim)| NewJobWrite {
                record,
                ready,
                idempotency: claim.as_ref(),
            })
            .collect();
        let outcomes = self.backends.jobs.create_jobs(&writes).await?;
        let mut created = 0;
        for ((i, record, _, claim), outcome) in staged.into_iter().zip(outcomes) {
            results[i] = Some(match (outcome, &claim) {
                (CreateOutcome::Created, _) => {
                    created += 1;
                    self.metrics
                        .job_submitted(&record.job.job_type, record.job.tenant.as_str());
                    if self.events.receiver_count() > 0 {
                        let _ = self.events.send(std::sync::Arc::new(JobEvent::Job(Box::new(
                            record.job.clone(),
                        ))));
                    }
                    Ok(Submitted {
                        job_id: record.job.job_id,
                        replayed: false,
                    })
                }
                (
                    CreateOutcome::Replayed {
                        job_id,
                        request_hash,
                    },
                    Some(claim),
                ) => replay(claim, job_id, &request_hash),
                (CreateOutcome::Replayed { .. }, None) => {
                    Err(EngineError::Conflict("job id collision".into()))
                }
            });
        }
        if created > 0 {
            self.after_dispatch().await;
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EngineError::Invalid("job was not processed".into()))))
            .collect())
    }

    /// The job alone.
    ///
    /// # Errors
    /// `NotFound`, or a store failure.
    pub async fn job(&self, id: &JobId) -> Result<Job, EngineError> {
        self.backends
            .jobs
            .get_job(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// The job with all its tasks.
    ///
    /// # Errors
    /// `NotFound`, or a store failure.
    pub async fn job_record(&self, id: &JobId) -> Result<JobRecord, EngineError> {
        self.backends
            .jobs
            .load_job(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// A page of jobs, newest first.
    ///
    /// # Errors
    /// `Invalid` for a cursor this store did not issue, or a store failure.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, EngineError> {
        match self.backends.jobs.list_jobs(filter).await {
            Err(crate::store::StoreError::NotFound(what)) => {
                Err(EngineError::Invalid(format!("invalid {what}")))
            }
            other => Ok(other?),
        }
    }

    /// A page of a job's tasks.
    ///
    /// # Errors
    /// `NotFound`, or a store failure.
    pub async fn list_tasks(
        &self,
        id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, EngineError> {
        match self.backends.jobs.list_tasks(id, filter).await {
            Err(crate::store::StoreError::NotFound(_)) => Err(not_found(id)),
            other => Ok(other?),
        }
    }
}

pub(super) fn not_found(id: &JobId) -> EngineError {
    EngineError::NotFound(format!("job {id} not found"))
}

fn replay(
    claim: &IdempotencyClaim,
    job_id: JobId,
    first_hash: &str,
) -> Result<Submitted, EngineError> {
    if first_hash != claim.request_hash {
        return Err(reused_key(&claim.key));
    }
    Ok(Submitted {
        job_id,
        replayed: true,
    })
}

fn reused_key(key: &IdempotencyKey) -> EngineError {
    EngineError::Conflict(format!(
        "Idempotency-Key `{key}` was already used for a different request"
    ))
}

/// A stable hash of everything in a submission that shapes the job.
fn request_hash(new: &NewJob) -> String {
    let tasks = new
        .tasks
        .as_ref()
        .map(|t| serde_json::to_value(t).unwrap_or_default());
    let canonical = serde_json::json!([
        new.tenant,
        new.job_type,
        new.input,
        new.policy,
        new.priority,
        new.planner_mode,
        new.model,
        new.latency_class,
        new.reasoning_required,
        new.data_classification,
        new.network_isolation,
        new.webhook_url,
        new.metadata,
        tasks,
    ]);
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}
