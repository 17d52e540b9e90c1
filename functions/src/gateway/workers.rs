//! Worker endpoints: register, heartbeat (lease renewal, cancel delivery), assignments, list.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use splai_shared::artifacts::{ArtifactKey, UploadSigner};
use splai_shared::domain::{
    Heartbeat, JobId, LeaseId, TaskId, TaskRef, Worker, WorkerId, WorkerRegistration,
};
use splai_shared::engine::{Assignment, HeartbeatReply, ReleaseOutcome};
use splai_shared::store::LeaseRenewal;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::detach::detached;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::openapi::ErrorBody;

fn worker_id(raw: String) -> Result<WorkerId, ApiError> {
    WorkerId::parse(raw).map_err(|e| ApiError::invalid(format!("path worker id: {e}")))
}

/// The registration body: the worker's id and what it offers. Spelled out rather than
/// flattened so that a bad field is named in the error.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    worker_id: WorkerId,
    #[serde(default)]
    cpu: f64,
    #[serde(default)]
    memory_mb: u64,
    #[serde(default)]
    gpu: bool,
    #[serde(default)]
    gpu_memory_mb: u64,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    tools: Vec<String>,
    #[serde(default)]
    backends: Vec<String>,
    locality: Option<String>,
}

impl RegisterRequest {
    fn into_parts(self) -> (WorkerId, WorkerRegistration) {
        let reg = WorkerRegistration {
            cpu: self.cpu,
            memory_mb: self.memory_mb,
            gpu: self.gpu,
            gpu_memory_mb: self.gpu_memory_mb,
            models: self.models,
            tools: self.tools,
            backends: self.backends,
            locality: self.locality,
        };
        (self.worker_id, reg)
    }
}

/// Registers or re-registers a worker.
#[utoipa::path(
    post,
    path = "/v1/workers/register",
    operation_id = "register_worker",
    tag = "workers",
    request_body = RegisterRequest,
    responses((status = 200, description = "Registered", body = Registered))
)]
pub async fn register(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<Registered>, ApiError> {
    let (id, registration) = req.into_parts();
    let worker = id.clone();
    detached(&s.engine, |e| async move {
        e.register_worker(&worker, &registration).await
    })
    .await?;
    let interval = s.engine.config().heartbeat_interval.as_secs().max(1);
    Ok(Json(Registered {
        accepted: true,
        heartbeat_interval_seconds: interval,
        max_inline_output_bytes: s.max_inline_output_bytes,
    }))
}

/// What a registration answers: how the worker should behave.
#[derive(Debug, Serialize, ToSchema)]
pub struct Registered {
    /// Always `true`.
    accepted: bool,
    /// How often to heartbeat.
    heartbeat_interval_seconds: u64,
    /// Outputs larger than this go to the artifact store, not inline in reports.
    max_inline_output_bytes: usize,
}

/// A lease the worker holds, as sent in a heartbeat.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeldLease {
    job_id: JobId,
    task_id: TaskId,
    lease_id: LeaseId,
}

/// The heartbeat body: load figures plus the leases to renew.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct HeartbeatRequest {
    queue_depth: u32,
    running_tasks: u32,
    cpu_util: f64,
    memory_util: f64,
    gpu_util: f64,
    leases: Vec<HeldLease>,
}

/// Records a heartbeat, renews leases, and says which tasks to stop.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/heartbeat",
    operation_id = "heartbeat",
    tag = "workers",
    params(("id" = WorkerId, Path, description = "The worker")),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, description = "Leases renewed, tasks to stop, leases lost", body = HeartbeatAnswer),
        (status = 404, description = "The worker is not registered", body = ErrorBody),
    )
)]
pub async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<HeartbeatRequest>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let id = worker_id(id)?;
    let leases: Vec<LeaseRenewal> = req.leases.into_iter().map(renewal).collect();
    let load = Heartbeat {
        queue_depth: req.queue_depth,
        running_tasks: req.running_tasks,
        cpu_util: req.cpu_util,
        memory_util: req.memory_util,
        gpu_util: req.gpu_util,
    };
    let reply = detached(&s.engine, |e| async move {
        e.heartbeat(&id, &load, &leases).await
    })
    .await?;
    Ok(Json(HeartbeatAnswer {
        accepted: true,
        reply,
    }))
}

/// What a heartbeat answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAnswer {
    /// Always `true`.
    accepted: bool,
    #[serde(flatten)]
    reply: HeartbeatReply,
}

/// The hand-back body: leases the worker gives up unfinished.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReleaseRequest {
    leases: Vec<HeldLease>,
}

/// Most leases one hand-back may carry.
const MAX_RELEASE: usize = 1000;

/// Takes leases back from a worker shutting down: their tasks are queued again at once.
#[utoipa::path(
    post,
    path = "/v1/workers/{id}/release",
    operation_id = "release_leases",
    tag = "workers",
    params(("id" = WorkerId, Path, description = "The worker")),
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Which leases were handed back and which were stale", body = Released),
        (status = 404, description = "The worker is not registered", body = ErrorBody),
    )
)]
pub async fn release(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> Result<Json<Released>, ApiError> {
    let id = worker_id(id)?;
    if req.leases.len() > MAX_RELEASE {
        return Err(ApiError::invalid(format!(
            "at most {MAX_RELEASE} leases per request"
        )));
    }
    let leases: Vec<LeaseRenewal> = req.leases.into_iter().map(renewal).collect();
    let handed = leases.clone();
    let outcomes = detached(&s.engine, |e| async move { e.release(&id, &handed).await }).await?;
    let (released, stale): (Vec<_>, Vec<_>) = leases
        .into_iter()
        .zip(outcomes)
        .partition(|(_, o)| *o == ReleaseOutcome::Released);
    let tasks = |v: Vec<(LeaseRenewal, ReleaseOutcome)>| -> Vec<TaskRef> {
        v.into_iter().map(|(l, _)| l.task).collect()
    };
    Ok(Json(Released {
        accepted: true,
        released: tasks(released),
        stale: tasks(stale),
    }))
}

/// What a release answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Released {
    /// Always `true`.
    accepted: bool,
    /// Requeued at once.
    released: Vec<TaskRef>,
    /// No longer this worker's lease; nothing done.
    stale: Vec<TaskRef>,
}

fn renewal(l: HeldLease) -> LeaseRenewal {
    LeaseRenewal {
        task: TaskRef {
            job_id: l.job_id,
            task_id: l.task_id,
        },
        lease_id: l.lease_id,
    }
}

/// Query of the assignment endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignmentsQuery {
    /// Most tasks to claim, 1 to 256 (default 1).
    #[param(minimum = 1, maximum = 256)]
    max_tasks: Option<u32>,
    /// Seconds to wait for work when none is ready (long poll; default 0; capped at
    /// `SPLAI_MAX_WAIT_SECONDS`, 30 by default).
    wait_seconds: Option<u32>,
}

/// Most tasks one claim may return.
const MAX_TASKS: u32 = 256;

/// Leases up to `max_tasks` ready tasks to the worker, long-polling up to `wait_seconds`.
#[utoipa::path(
    get,
    path = "/v1/workers/{id}/assignments",
    operation_id = "claim_assignments",
    tag = "workers",
    params(("id" = WorkerId, Path, description = "The worker"), AssignmentsQuery),
    responses(
        (status = 200, description = "Leased tasks (possibly none)", body = Assignments),
        (status = 400, description = "An invalid query", body = ErrorBody),
        (status = 404, description = "The worker is not registered", body = ErrorBody),
    )
)]
pub async fn assignments(
    State(s): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AssignmentsQuery>,
) -> Result<Json<Assignments>, ApiError> {
    let id = worker_id(id)?;
    let max = q.max_tasks.unwrap_or(1);
    if !(1..=MAX_TASKS).contains(&max) {
        return Err(ApiError::invalid(format!(
            "query `max_tasks` must be between 1 and {MAX_TASKS}"
        )));
    }
    let wait = Duration::from_secs(u64::from(q.wait_seconds.unwrap_or(0)));
    let mut assignments = s.engine.assign(&id, max as usize, wait).await?;
    if let Some(signer) = &s.upload_signer {
        attach_upload_urls(signer.as_ref(), &mut assignments).await?;
    }
    Ok(Json(Assignments {
        worker_id: id,
        assignments,
    }))
}

/// Leased tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct Assignments {
    worker_id: WorkerId,
    assignments: Vec<Assignment>,
}

/// Registered workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    workers: Vec<Worker>,
}

/// Gives each assignment a presigned URL for its output. Signing is local (no request to the
/// store); should it fail, the request fails and the leases run out, so the tasks are handed
/// out again rather than run without a place for their output.
async fn attach_upload_urls(
    signer: &dyn UploadSigner,
    assignments: &mut [Assignment],
) -> Result<(), ApiError> {
    for a in assignments {
        let key = ArtifactKey::output(a.job_id.clone(), a.task_id.clone());
        let timeout = Duration::from_secs(u64::from(a.timeout_sec));
        a.output_upload = Some(
            signer
                .presign_put(&key, "application/json", timeout)
                .await?,
        );
    }
    Ok(())
}

/// All registered workers with their health.
#[utoipa::path(
    get,
    path = "/v1/workers",
    operation_id = "list_workers",
    tag = "workers",
    responses((status = 200, description = "Registered workers with their health", body = WorkerList))
)]
pub async fn list(State(s): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    Ok(Json(WorkerList {
        workers: s.engine.list_workers().await?,
    }))
}
