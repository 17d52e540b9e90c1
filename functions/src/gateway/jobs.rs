//! `POST/GET /v1/jobs`, `GET/DELETE /v1/jobs/{id}`, `POST /v1/jobs/{id}/retry`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use splai_shared::domain::{
    IdempotencyKey, Job, JobId, NewJob, PlannerMode, Priority, Status, TASK_EVENTS, TaskSpec,
    TenantId, WEBHOOK_EVENTS_KEY,
};
use splai_shared::engine::{EngineError, Submitted};
use splai_shared::store::JobFilter;
use utoipa::{IntoParams, ToSchema};

use super::{AppState, check_job, job_id, visible_job};
use crate::admin::audit::{self, Action, Origin};
use crate::auth::{Caller, TenantAccess};
use crate::detach::detached;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams, parse_json};
use crate::openapi::{ErrorBody, ErrorDetail};

/// The submit body, as the original API defines it plus the new fields.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitJobRequest {
    /// The tenant (else `X-SPLAI-Tenant`, else `default`).
    tenant: Option<TenantId>,
    /// The job type the planner expands (`chat`, `analysis`, ...); not empty.
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    job_type: String,
    /// The job's input, handed to its tasks.
    #[serde(default)]
    input: Value,
    /// A policy name, checked by the policy rules.
    policy: Option<String>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    planner_mode: PlannerMode,
    /// The model to run (else routing decides).
    model: Option<String>,
    /// A routing hint (`interactive`, `batch`, ...).
    latency_class: Option<String>,
    /// A routing hint: the job needs a reasoning model.
    #[serde(default)]
    reasoning_required: bool,
    /// Checked by the policy rules (e.g. `restricted`).
    data_classification: Option<String>,
    /// Checked by the policy rules.
    network_isolation: Option<String>,
    /// An http(s) URL that receives signed `job.*` events.
    webhook_url: Option<String>,
    /// Free-form metadata; `webhook_events` lists task events to send as well.
    #[serde(default)]
    metadata: Map<String, Value>,
    /// Explicit tasks instead of the planner's template.
    tasks: Option<Vec<TaskSpec>>,
    /// The `Idempotency-Key` header's equivalent, for bulk submits where each job has its own.
    idempotency_key: Option<String>,
}

impl SubmitJobRequest {
    /// Validates what serde cannot and resolves the tenant ([`resolve_tenant`]) and the
    /// idempotency key from headers.
    pub(crate) fn into_new_job(
        self,
        headers: &HeaderMap,
        caller: &Caller,
    ) -> Result<NewJob, ApiError> {
        if self.job_type.trim().is_empty() {
            return Err(ApiError::invalid("field `type` must not be empty"));
        }
        if let Some(url) = &self.webhook_url {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(ApiError::invalid(format!(
                    "field `webhook_url` must be an http(s) URL, got `{url}`"
                )));
            }
        }
        let tenant = resolve_tenant(self.tenant, headers, caller)?;
        let header_key = header(headers, "idempotency-key")?;
        let idempotency_key = match (header_key, self.idempotency_key.as_deref()) {
            (Some(h), Some(b)) if h != b => {
                return Err(ApiError::invalid(
                    "header Idempotency-Key and field `idempotency_key` differ; send one",
                ));
            }
            (Some(k), _) => Some(
                IdempotencyKey::parse(k)
                    .map_err(|e| ApiError::invalid(format!("header Idempotency-Key: {e}")))?,
            ),
            (None, Some(k)) => Some(
                IdempotencyKey::parse(k)
                    .map_err(|e| ApiError::invalid(format!("field `idempotency_key`: {e}")))?,
            ),
            (None, None) => None,
        };
        Ok(NewJob {
            tenant: Some(tenant),
            job_type: self.job_type,
            input: self.input,
            policy: self.policy,
            priority: self.priority,
            planner_mode: self.planner_mode,
            model: self.model,
            latency_class: self.latency_class,
            reasoning_required: self.reasoning_required,
            data_classification: self.data_classification,
            network_isolation: self.network_isolation,
            webhook_url: self.webhook_url,
            metadata: self.metadata,
            tasks: self.tasks,
            idempotency_key,
            // The request's span: the job's tasks join this trace.
            trace_parent: splai_telemetry::traceparent(&tracing::Span::current()),
        })
    }
}

/// The tenant a request acts in: the body's, then `X-SPLAI-Tenant`'s, then `default`. It must
/// be one the caller may act in (403 otherwise: the caller named it, so nothing leaks).
pub(crate) fn resolve_tenant(
    body: Option<TenantId>,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<TenantId, ApiError> {
    let tenant = match body {
        Some(t) => Some(t),
        None => header(headers, "x-splai-tenant")?
            .map(TenantId::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("header X-SPLAI-Tenant: {e}")))?,
    }
    .unwrap_or_else(TenantId::default_tenant);
    if !caller.may_act_in(&tenant) {
        return Err(ApiError::forbidden(format!(
            "this token may not act in tenant `{tenant}`"
        )));
    }
    Ok(tenant)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid(format!("header {name} must be visible ASCII")))
        })
        .transpose()
}

/// What a submit answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobAccepted {
    job_id: JobId,
}

/// Submits a job: 202 with its id, or 200 with the first job's id for a repeated key.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    request_body = SubmitJobRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "A repeated key answers the first job"),
        ("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant when the body names none"),
    ),
    responses(
        (status = 202, description = "Accepted", body = JobAccepted),
        (status = 200, description = "A repeated idempotency key: the first job", body = JobAccepted,
         headers(("idempotent-replayed" = String, description = "`true`"))),
        (status = 400, description = "Invalid job", body = ErrorBody),
        (status = 403, description = "Denied by policy, or a tenant the token may not act in", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for a different request", body = ErrorBody),
    )
)]
pub async fn submit(
    State(s): State<AppState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Response, ApiError> {
    let new = req.into_new_job(&headers, &caller)?;
    webhook_gate(&s, &new)?;
    policy_gate(&s, &origin, &new, "/v1/jobs").await?;
    let done = detached(&s.engine, |e| async move { e.submit(new).await }).await?;
    let body = Json(JobAccepted {
        job_id: done.job_id,
    });
    Ok(if done.replayed {
        (StatusCode::OK, [("idempotent-replayed", "true")], body).into_response()
    } else {
        (StatusCode::ACCEPTED, body).into_response()
    })
}

/// The bulk submit body: jobs kept raw so that each is parsed, and rejected, on its own.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubmitBatchRequest {
    /// Up to 10,000 submit bodies; each may carry its own `idempotency_key`.
    #[schema(value_type = Vec<SubmitJobRequest>)]
    jobs: Vec<Box<RawValue>>,
}

/// What a bulk submit answers: counts, and one result per job in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchSubmitted {
    accepted: usize,
    replayed: usize,
    rejected: usize,
    results: Vec<BatchResult>,
}

/// One job's result in a bulk submit.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResult {
    /// The job's position in the request.
    index: usize,
    status: BatchStatus,
    /// The job, unless rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<JobId>,
    /// Why it was rejected: what a single submit would have answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

/// What happened to one job of a bulk submit.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// A new job.
    Accepted,
    /// A repeated idempotency key: the first job.
    Replayed,
    /// Not submitted; see `error`.
    Rejected,
}

/// Most jobs one bulk submit may carry.
const MAX_BATCH_JOBS: usize = 10_000;

/// Submits many jobs: 200 with one result per job, in order, each `accepted`, `replayed` or
/// `rejected` (with the error a single submit would have got). Per-job idempotency keys go in
/// each job's `idempotency_key` field.
#[utoipa::path(
    post,
    path = "/v1/jobs/batch",
    operation_id = "submit_jobs_batch",
    tag = "jobs",
    request_body = SubmitBatchRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant of jobs that name none")),
    responses(
        (status = 200, description = "One result per job", body = BatchSubmitted),
        (status = 400, description = "Not a batch, too many jobs, or an Idempotency-Key header", body = ErrorBody),
    )
)]
pub async fn submit_batch(
    State(s): State<AppState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitBatchRequest>,
) -> Result<Json<BatchSubmitted>, ApiError> {
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::invalid(
            "a bulk submit takes no Idempotency-Key header: give each job an `idempotency_key`",
        ));
    }
    if req.jobs.len() > MAX_BATCH_JOBS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_BATCH_JOBS} jobs per bulk submit, got {}",
            req.jobs.len()
        )));
    }
    // Each job is parsed alone, so one bad job is rejected without failing the others.
    let mut valid = Vec::with_capacity(req.jobs.len());
    let mut parsed: Vec<Result<(), ApiError>> = Vec::with_capacity(req.jobs.len());
    for raw in &req.jobs {
        let job = match parse_json::<SubmitJobRequest>(raw.get().as_bytes())
            .and_then(|r| r.into_new_job(&headers, &caller))
            .and_then(|j| webhook_gate(&s, &j).map(|()| j))
        {
            Ok(job) => policy_gate(&s, &origin, &job, "/v1/jobs/batch")
                .await
                .map(|()| job),
            Err(e) => Err(e),
        };
        match job {
            Ok(job) => {
                valid.push(job);
                parsed.push(Ok(()));
            }
            Err(e) => parsed.push(Err(e)),
        }
    }
    let mut submitted = detached(&s.engine, |e| async move { e.submit_many(valid).await })
        .await?
        .into_iter();
    let mut counts = [0usize; 3];
    let results: Vec<BatchResult> = parsed
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let outcome = p.and_then(|()| {
                submitted
                    .next()
                    .unwrap_or_else(|| Err(EngineError::Invalid("job was not processed".into())))
                    .map_err(ApiError::from)
            });
            batch_result(i, outcome, &mut counts)
        })
        .collect();
    Ok(Json(BatchSubmitted {
        accepted: counts[0],
        replayed: counts[1],
        rejected: counts[2],
        results,
    }))
}

/// A job's `webhook_url` must be an allowed destination (no loopback, private or link-local
/// address unless allowed) with a secret to sign for its tenant: 400 otherwise, nothing
/// written.
/// `metadata.webhook_events`, if given, must list known task events.
fn webhook_gate(s: &AppState, new: &NewJob) -> Result<(), ApiError> {
    if let Some(asked) = new.metadata.get(WEBHOOK_EVENTS_KEY) {
        let known = asked.as_array().is_some_and(|a| {
            a.iter()
                .all(|e| e.as_str().is_some_and(|e| TASK_EVENTS.contains(&e)))
        });
        if !known {
            return Err(ApiError::invalid(format!(
                "field `metadata.{WEBHOOK_EVENTS_KEY}` must be an array of {TASK_EVENTS:?}"
            )));
        }
    }
    let (Some(url), Some(tenant)) = (&new.webhook_url, &new.tenant) else {
        return Ok(());
    };
    s.webhooks
        .check_submit(url, tenant)
        .map_err(|m| ApiError::invalid(format!("field `webhook_url`: {m}")))
}

/// With a policy (`SPLAI_POLICY_FILE`): the rules and the tenant's `max_running_jobs`, the
/// decision audited as `policy_check_submit`; a denied job gets 403 with the reason, and
/// nothing of it is written. Without a policy, nothing happens.
pub(crate) async fn policy_gate(
    s: &AppState,
    origin: &Origin,
    new: &NewJob,
    resource: &str,
) -> Result<(), ApiError> {
    if s.engine.policy().is_none() {
        return Ok(());
    }
    let d = s.engine.check_submit(new).await?;
    let tenant = new.tenant.clone().unwrap_or_else(TenantId::default_tenant);
    audit::record(
        &s.engine,
        origin,
        Action {
            action: "policy_check_submit",
            tenant: Some(tenant),
            resource,
            payload: None,
            requested: Some(1),
            result: if d.allowed { "allowed" } else { "denied" },
            details: json!({ "rule": d.rule, "reason": d.reason, "job_type": new.job_type }),
        },
    )
    .await?;
    if d.allowed {
        return Ok(());
    }
    let by = d.rule.map_or_else(
        || "the default action".to_owned(),
        |r| format!("rule `{r}`"),
    );
    Err(ApiError::forbidden(format!(
        "denied by policy ({by}): {}",
        d.reason
    )))
}

fn batch_result(
    index: usize,
    outcome: Result<Submitted, ApiError>,
    counts: &mut [usize; 3],
) -> BatchResult {
    let (status, job_id, error) = match outcome {
        Ok(done) if done.replayed => (BatchStatus::Replayed, Some(done.job_id), None),
        Ok(done) => (BatchStatus::Accepted, Some(done.job_id), None),
        Err(e) => {
            let message = format!("jobs[{index}]: {}", e.message);
            (
                BatchStatus::Rejected,
                None,
                Some(ErrorDetail::new(e.code, message)),
            )
        }
    };
    counts[status as usize] += 1;
    BatchResult {
        index,
        status,
        job_id,
        error,
    }
}

/// One job.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "No such job (or not the caller's tenant)", body = ErrorBody),
    )
)]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(visible_job(&s, &caller, &job_id(id)?).await?))
}

/// That a request was taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Always `true`.
    accepted: bool,
}

/// Cancels a job.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "cancel_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job")),
    responses(
        (status = 200, description = "Canceled", body = Accepted),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Accepted>, ApiError> {
    let id = job_id(id)?;
    check_job(&s, &caller, &id).await?;
    detached(&s.engine, |e| async move { e.cancel(&id).await }).await?;
    Ok(Json(Accepted { accepted: true }))
}

/// That a retry was taken.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryAccepted {
    /// Always `true`.
    accepted: bool,
    job_id: JobId,
}

/// Re-runs a failed or canceled job.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    operation_id = "retry_job",
    tag = "jobs",
    params(("id" = JobId, Path, description = "The job")),
    responses(
        (status = 200, description = "Requeued", body = RetryAccepted),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job is not failed or canceled", body = ErrorBody),
    )
)]
pub async fn retry(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RetryAccepted>, ApiError> {
    let id = job_id(id)?;
    check_job(&s, &caller, &id).await?;
    let job = id.clone();
    detached(&s.engine, |e| async move { e.retry(&job).await }).await?;
    Ok(Json(RetryAccepted {
        accepted: true,
        job_id: id,
    }))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    /// Only jobs in this status.
    status: Option<Status>,
    /// Only this tenant's jobs (else `X-SPLAI-Tenant`).
    tenant: Option<TenantId>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    job_type: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<Job>,
    /// Where the next page starts; `null` on the last page.
    next_cursor: Option<String>,
}

/// Most jobs one page may hold.
const MAX_PAGE: u32 = 500;

/// Lists jobs, newest first. The tenant filter is the `tenant` query, then `X-SPLAI-Tenant`;
/// a tenant-scoped caller sees only its tenants (its one tenant when it names none).
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    params(
        ListJobsQuery,
        ("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant when the query names none"),
    ),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobList),
        (status = 400, description = "An invalid query", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(q): QueryParams<ListJobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "query `limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    let named = match q.tenant {
        Some(t) => Some(t),
        None => header(&headers, "x-splai-tenant")?
            .map(TenantId::parse)
            .transpose()
            .map_err(|e| ApiError::invalid(format!("header X-SPLAI-Tenant: {e}")))?,
    };
    let tenant = match (caller.tenants(), named) {
        (TenantAccess::All, named) => named,
        (TenantAccess::Only(mine), Some(t)) if !mine.contains(&t) => {
            return Ok(Json(JobList {
                jobs: Vec::new(),
                next_cursor: None,
            }));
        }
        (TenantAccess::Only(_), Some(t)) => Some(t),
        (TenantAccess::Only(mine), None) if mine.len() == 1 => mine.into_iter().next(),
        (TenantAccess::Only(_), None) => {
            return Err(ApiError::invalid(
                "this token acts in several tenants: name one with query `tenant` or X-SPLAI-Tenant",
            ));
        }
    };
    let filter = JobFilter {
        status: q.status,
        tenant,
        job_type: q.job_type,
        limit,
        cursor: q.cursor,
    };
    let page = s.engine.list_jobs(&filter).await?;
    Ok(Json(JobList {
        jobs: page.jobs,
        next_cursor: page.next_cursor,
    }))
}
