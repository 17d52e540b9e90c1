//! Policy enforcement (`SPLAI_POLICY_FILE`): the submit check with the `max_running_jobs`
//! quota, and the assignment check with `max_running_tasks`. Without a policy nothing here
//! runs.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Engine, EngineError};
use crate::domain::{JobRecord, NewAuditEvent, NewJob, Status, TenantId, WorkerCaps};
use crate::policy::{Decision, Policy, Subject};
use crate::store::JobFilter;

impl Engine {
    /// Sets the policy the engine enforces at assignment and offers for submit checks.
    #[must_use]
    pub fn with_policy(mut self, policy: Option<Arc<Policy>>) -> Engine {
        self.policy = policy;
        self
    }

    /// The policy, if one is configured.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_deref()
    }

    /// Decides whether `job` may be submitted: the first matching rule (or the default), then
    /// the tenant's `max_running_jobs` against its queued and running jobs. Allowed when no
    /// policy is configured. Writes nothing.
    ///
    /// # Errors
    /// Store failures while counting.
    pub async fn check_submit(&self, job: &NewJob) -> Result<Decision, EngineError> {
        let Some(policy) = self.policy.as_deref() else {
            return Ok(Decision {
                allowed: true,
                rule: None,
                reason: "no_policy".to_owned(),
            });
        };
        let decision = policy.evaluate_submit(job);
        if !decision.allowed {
            return Ok(decision);
        }
        let tenant = job.tenant.clone().unwrap_or_else(TenantId::default_tenant);
        if let Some(max) = policy.quota(&tenant).and_then(|q| q.max_running_jobs) {
            let running = self
                .count_active_jobs(&tenant, max.saturating_add(1))
                .await?;
            if running >= max {
                return Ok(Decision {
                    allowed: false,
                    rule: Some(format!("tenant_quotas.{tenant}.max_running_jobs")),
                    reason: format!(
                        "quota max_running_jobs ({max}) reached for tenant {tenant}: {running} jobs queued or running"
                    ),
                });
            }
        }
        Ok(decision)
    }

    /// The tenant's queued and running jobs, counted up to `cap`.
    async fn count_active_jobs(&self, tenant: &TenantId, cap: u64) -> Result<u64, EngineError> {
        let mut n = 0u64;
        for status in [Status::Queued, Status::Running] {
            let mut cursor = None;
            loop {
                let page = self
                    .list_jobs(&JobFilter {
                        status: Some(status),
                        tenant: Some(tenant.clone()),
                        job_type: None,
                        limit: 500,
                        cursor,
                    })
                    .await?;
                n += page.jobs.len() as u64;
                if n >= cap || page.next_cursor.is_none() {
                    break;
                }
                cursor = page.next_cursor;
            }
        }
        Ok(n)
    }

    /// Running tasks per tenant, for the tenants among `tenants` that have a
    /// `max_running_tasks` quota.
    pub(super) async fn running_tasks(
        &self,
        tenants: impl Iterator<Item = TenantId>,
    ) -> Result<HashMap<TenantId, (u64, u64)>, EngineError> {
        let mut out = HashMap::new();
        let Some(policy) = self.policy.as_deref() else {
            return Ok(out);
        };
        for tenant in tenants {
            if out.contains_key(&tenant) {
                continue;
            }
            let Some(max) = policy.quota(&tenant).and_then(|q| q.max_running_tasks) else {
                continue;
            };
            let mut n = 0u64;
            let mut cursor = None;
            loop {
                let page = self
                    .list_jobs(&JobFilter {
                        status: Some(Status::Running),
                        tenant: Some(tenant.clone()),
                        job_type: None,
                        limit: 500,
                        cursor,
                    })
                    .await?;
                for job in &page.jobs {
                    if let Some(record) = self.backends.jobs.load_job(&job.job_id).await? {
                        n += record
                            .tasks
                            .iter()
                            .filter(|t| t.status == Status::Running)
                            .count() as u64;
                    }
                }
                if n >= max || page.next_cursor.is_none() {
                    break;
                }
                cursor = page.next_cursor;
            }
            out.insert(tenant, (n, max));
        }
        Ok(out)
    }

    /// Writes a `policy_check_assignment` event; a failed write is logged, not fatal.
    pub(super) async fn audit_assignment(
        &self,
        worker: &WorkerCaps,
        record_tenant: &TenantId,
        resource: String,
        decision: &Decision,
    ) {
        let event = NewAuditEvent {
            action: "policy_check_assignment".to_owned(),
            actor: worker
                .worker_id
                .as_ref()
                .map_or_else(|| "worker".to_owned(), |w| format!("worker:{w}")),
            tenant: Some(record_tenant.clone()),
            remote_addr: None,
            resource,
            payload_hash: None,
            requested: None,
            result: if decision.allowed {
                "allowed"
            } else {
                "denied"
            }
            .to_owned(),
            details: serde_json::json!({ "rule": decision.rule, "reason": decision.reason }),
            created_at: self.clock.now(),
        };
        if let Err(e) = self.backends.audit.append(event).await {
            tracing::warn!(error = %e, "policy_check_assignment not audited");
        }
    }
}

/// The assignment decision for one task of `record` on `worker`; `running` carries the
/// tenant's running-task count and quota, and is bumped when the task is allowed.
pub(super) fn decide_assignment(
    policy: &Policy,
    record: &JobRecord,
    task_id: &crate::domain::TaskId,
    worker: &WorkerCaps,
    running: Option<&mut (u64, u64)>,
) -> Option<Decision> {
    let task = record.task(task_id)?;
    let j = &record.job;
    let subject = Subject {
        tenant: Some(j.tenant.to_string()),
        job_type: Some(j.job_type.clone()),
        model: j.model.clone(),
        data_classification: j.data_classification.clone(),
        priority: Some(j.priority),
        network_isolation: j.network_isolation.clone(),
        ..Subject::default()
    };
    let task_type = serde_json::to_value(task.task_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let decision = policy.evaluate_assignment(&subject, &task_type, task.resources.gpu, worker);
    if !decision.allowed {
        return Some(decision);
    }
    if let Some((n, max)) = running {
        if *n >= *max {
            return Some(Decision {
                allowed: false,
                rule: Some(format!("tenant_quotas.{}.max_running_tasks", j.tenant)),
                reason: format!(
                    "quota max_running_tasks ({max}) reached for tenant {}",
                    j.tenant
                ),
            });
        }
        *n += 1;
    }
    Some(decision)
}
