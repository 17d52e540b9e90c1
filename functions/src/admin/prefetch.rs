//! `POST /v1/admin/models/prefetch`: puts a model into the cache of the named workers (or of
//! every healthy one) ahead of the work that needs it.
//!
//! The request becomes one ordinary job of `model_download` tasks, one per worker, each pinned
//! to its worker by `constraints.worker_id`: durable, retried and visible at
//! `GET /v1/jobs/{id}` like any other job. Input is checked first, so a bad request writes
//! nothing: an empty or malformed model or an unsupported source is a 400, a worker that is
//! not registered a 404 naming it.

use std::collections::{BTreeSet, HashMap};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use splai_shared::domain::{
    Constraints, NewJob, Priority, TaskId, TaskSpec, TaskType, TenantId, Worker, WorkerHealth,
    WorkerId,
};
use splai_worker::executor::{model_id_problem, source_supported};
use utoipa::ToSchema;

use super::AdminState;
use super::audit::{self, Action, Origin};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::gateway::jobs::resolve_tenant;
use crate::openapi::ErrorBody;

/// The audit action of a prefetch.
pub const ACTION: &str = "model_prefetch";
/// The job type of the job a prefetch submits.
pub const JOB_TYPE: &str = "model_prefetch";

const RESOURCE: &str = "/v1/admin/models/prefetch";
/// Soft timeout of one download attempt: models are large, and the engine's default (meant
/// for inference) would cut a big download off and start it again.
const DOWNLOAD_TIMEOUT_SEC: u32 = 3600;

/// Body of `POST /v1/admin/models/prefetch`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PrefetchRequest {
    /// Hugging Face model id (`org/name`).
    #[serde(default)]
    pub model: String,
    /// Where from; only `huggingface` (or `hf`), the default.
    pub source: Option<String>,
    /// The workers to fill; empty or absent means every healthy registered worker.
    #[serde(default)]
    pub workers: Vec<WorkerId>,
    /// Skip workers whose registered inventory lists the model, and let the download skip a
    /// complete cached copy (default `true`). `false` downloads again everywhere named.
    #[serde(default = "yes")]
    pub only_missing: bool,
    /// The job's priority class.
    #[serde(default)]
    pub priority: Priority,
    /// The job's tenant: this, then `X-SPLAI-Tenant`, then `default`.
    pub tenant: Option<TenantId>,
}

fn yes() -> bool {
    true
}

/// What happened for one worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerOutcome {
    worker_id: WorkerId,
    /// `scheduled` or `skipped`.
    #[schema(value_type = String)]
    status: &'static str,
    /// For `scheduled`: the task pinned to the worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<TaskId>,
    /// For `skipped`: why (`already_present`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    reason: Option<&'static str>,
    /// The worker's health when the request was made (a stale worker runs its task when it
    /// comes back).
    health: WorkerHealth,
}

/// The answer: the job (`null` when every worker was skipped) and one outcome per worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrefetchResponse {
    job_id: Option<String>,
    model: String,
    scheduled: usize,
    skipped: usize,
    workers: Vec<WorkerOutcome>,
}

/// Schedules the downloads: 202 with the job when any task was scheduled, 200 (`job_id`
/// `null`) when every worker already had the model.
#[utoipa::path(
    post,
    path = "/v1/admin/models/prefetch",
    operation_id = "prefetch_model",
    tag = "admin",
    request_body = PrefetchRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The job's tenant when the body names none")),
    responses(
        (status = 202, description = "A download task pinned to each worker that needs the model", body = PrefetchResponse),
        (status = 200, description = "Every worker has the model: nothing scheduled", body = PrefetchResponse),
        (status = 400, description = "An invalid model id or source", body = ErrorBody),
        (status = 404, description = "A named worker is not registered", body = ErrorBody),
        (status = 409, description = "No worker to fill", body = ErrorBody),
    )
)]
pub async fn prefetch(
    State(s): State<AdminState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PrefetchRequest>,
) -> Result<Response, ApiError> {
    let payload = serde_json::to_vec(&req).unwrap_or_default();
    let (model, source) = check_input(&req)?;
    let tenant = resolve_tenant(req.tenant.clone(), &headers, &caller)?;
    let targets = targets(&s, &req.workers).await?;
    let (tasks, workers) = plan(targets, &model, &source, req.only_missing);
    let scheduled = tasks.len();
    let job_id = if tasks.is_empty() {
        None
    } else {
        let job = NewJob {
            tenant: Some(tenant.clone()),
            job_type: JOB_TYPE.to_owned(),
            input: json!({ "model": model, "source": source, "only_missing": req.only_missing }),
            priority: req.priority,
            tasks: Some(tasks),
            ..NewJob::default()
        };
        // No submit policy gate: this is an operator action, not tenant work. The policy's
        // assignment rules still apply to each task when its worker claims it.
        Some(s.engine.submit(job).await?.job_id.to_string())
    };
    let resp = PrefetchResponse {
        job_id,
        model,
        scheduled,
        skipped: workers.len() - scheduled,
        workers,
    };
    record(&s, &origin, tenant, &payload, &resp).await;
    let status = match resp.job_id {
        Some(_) => StatusCode::ACCEPTED,
        None => StatusCode::OK,
    };
    Ok((status, Json(resp)).into_response())
}

/// The model id and source as the worker's `model_download` accepts them (the source in
/// lower case, `huggingface` by default).
fn check_input(req: &PrefetchRequest) -> Result<(String, String), ApiError> {
    let model = req.model.trim();
    if model.is_empty() {
        return Err(ApiError::invalid(
            "field `model` must name a model (e.g. `org/name`)",
        ));
    }
    if let Some(problem) = model_id_problem(model) {
        return Err(ApiError::invalid(format!("field `model`: {problem}")));
    }
    let source = req.source.as_deref().map_or("huggingface", str::trim);
    if !source_supported(source) {
        return Err(ApiError::invalid(format!(
            "field `source`: `{source}` is not supported; only `huggingface`"
        )));
    }
    Ok((model.to_owned(), source.to_ascii_lowercase()))
}

/// One download task per target, except (with `only_missing`) where the worker's registered
/// inventory already lists the model; and what happened for each worker, in order.
fn plan(
    targets: Vec<Worker>,
    model: &str,
    source: &str,
    only_missing: bool,
) -> (Vec<TaskSpec>, Vec<WorkerOutcome>) {
    let mut tasks = Vec::new();
    let mut outcomes = Vec::with_capacity(targets.len());
    for w in targets {
        let present = w.registration.models.iter().any(|m| m == model);
        let task = (!(only_missing && present))
            .then(|| download_task(&w.worker_id, model, source, only_missing));
        outcomes.push(WorkerOutcome {
            status: if task.is_some() {
                "scheduled"
            } else {
                "skipped"
            },
            task_id: task.as_ref().map(|t| t.task_id.clone()),
            reason: task.is_none().then_some("already_present"),
            worker_id: w.worker_id,
            health: w.health,
        });
        tasks.extend(task);
    }
    (tasks, outcomes)
}

/// Appends the `model_prefetch` audit event. The job is already written, so a failure to
/// audit it is logged loudly and the answer still stands.
async fn record(
    s: &AdminState,
    origin: &Origin,
    tenant: TenantId,
    payload: &[u8],
    resp: &PrefetchResponse,
) {
    let action = Action {
        action: ACTION,
        tenant: Some(tenant),
        resource: RESOURCE,
        payload: Some(payload),
        requested: Some(u32::try_from(resp.workers.len()).unwrap_or(u32::MAX)),
        result: "ok",
        details: json!({
            "job_id": resp.job_id,
            "model": resp.model,
            "scheduled": resp.scheduled,
            "skipped": resp.skipped,
        }),
    };
    if let Err(e) = audit::record(&s.engine, origin, action).await {
        tracing::error!(error = %e.message, job_id = ?resp.job_id, "auditing a prefetch failed");
    }
}

/// The named workers in the order given (repeats dropped), or every healthy worker. A name
/// that is not registered is a 404 naming every such name; nothing is written.
async fn targets(s: &AdminState, named: &[WorkerId]) -> Result<Vec<Worker>, ApiError> {
    let all = s.engine.list_workers().await?;
    if named.is_empty() {
        let healthy: Vec<Worker> = all
            .into_iter()
            .filter(|w| w.health == WorkerHealth::Healthy)
            .collect();
        if healthy.is_empty() {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: "no healthy worker is registered; name the workers in `workers`".into(),
            });
        }
        return Ok(healthy);
    }
    let mut by_id: HashMap<WorkerId, Worker> =
        all.into_iter().map(|w| (w.worker_id.clone(), w)).collect();
    let mut seen = BTreeSet::new();
    let mut unknown = Vec::new();
    let mut found = Vec::new();
    for id in named {
        if !seen.insert(id) {
            continue;
        }
        match by_id.remove(id) {
            Some(w) => found.push(w),
            None => unknown.push(id.as_str()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::not_found(format!(
            "unknown worker(s): {}; nothing was scheduled",
            unknown.join(", ")
        )));
    }
    Ok(found)
}

/// One `model_download` task for `worker`, named after it and pinned to it.
fn download_task(worker: &WorkerId, model: &str, source: &str, only_missing: bool) -> TaskSpec {
    let mut inputs = Map::new();
    inputs.insert("model".into(), Value::from(model));
    inputs.insert("source".into(), Value::from(source));
    inputs.insert("only_if_missing".into(), Value::from(only_missing));
    TaskSpec {
        // Invariant: worker and task ids share one alphabet and length limit, so a valid
        // worker id is a valid task id.
        task_id: TaskId::parse(worker.as_str()).expect("a worker id is a valid task id"),
        task_type: TaskType::ModelDownload,
        inputs,
        dependencies: Vec::new(),
        max_retries: None,
        timeout_sec: Some(DOWNLOAD_TIMEOUT_SEC),
        resources: Default::default(),
        constraints: Constraints {
            worker_id: Some(worker.clone()),
            ..Constraints::default()
        },
    }
}
