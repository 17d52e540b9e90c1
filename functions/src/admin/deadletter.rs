//! `GET` and `POST /v1/admin/queue/dead-letter`: list dead letters, and requeue selected ones
//! behind three guards (batch size, a rate limit shared by every instance through the audit
//! log, and a confirmation token for large batches). Every requeue, dry run and refusal is
//! appended to the audit log.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use splai_shared::backends::Secret;
use splai_shared::domain::TaskRef;
use splai_shared::engine::EngineError;
use splai_shared::store::AuditFilter;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use super::audit::{self, Action, Origin};
use crate::detach::detached;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::openapi::ErrorBody;

/// The audit action of every requeue request (result `ok`, `dry_run` or `rejected`).
pub const REQUEUE_ACTION: &str = "deadletter_requeue";
/// The audit action of a dead-letter listing.
pub const LIST_ACTION: &str = "deadletter_list";
/// The header carrying the confirmation token.
pub const CONFIRM_HEADER: &str = "x-splai-confirm";

const RESOURCE: &str = "/v1/admin/queue/dead-letter";
/// Most dead letters one listing may return.
const MAX_LIST: u32 = 1000;
/// Audit page size while counting the last minute's requeues.
const COUNT_PAGE: u32 = 1000;
/// Most dead letters a dry run scans for the named tasks.
const DRY_RUN_SCAN: usize = 100_000;
/// The rate-limit window.
const WINDOW: Duration = Duration::from_secs(60);

/// The requeue guards, read once at start-up from `SPLAI_ADMIN_REQUEUE_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequeueGuards {
    /// Most tasks one request may name (`SPLAI_ADMIN_REQUEUE_MAX_BATCH`, default 100).
    pub max_batch: usize,
    /// Most tasks requeued per minute across all instances
    /// (`SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN`, default 30; 0 turns the limit off).
    pub rate_limit_per_min: u64,
    /// Batches larger than this need `X-SPLAI-Confirm` when a confirm token is set
    /// (`SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD`, default 20).
    pub confirm_threshold: usize,
    /// The confirmation token (`SPLAI_ADMIN_REQUEUE_CONFIRM_TOKEN`); unset, no confirmation is
    /// asked. Never logged (`Debug` redacts it) nor returned.
    pub confirm_token: Option<Secret>,
}

impl Default for RequeueGuards {
    fn default() -> Self {
        Self {
            max_batch: 100,
            rate_limit_per_min: 30,
            confirm_threshold: 20,
            confirm_token: None,
        }
    }
}

/// Query of `GET /v1/admin/queue/dead-letter`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Most dead letters to list, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// One dead letter as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    job_id: String,
    task_id: String,
    tenant: String,
    attempt: u32,
    reason: String,
    dead_at: String,
}

/// `{tasks:[...]}`, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    tasks: Vec<DeadLetterView>,
}

/// Body of `POST /v1/admin/queue/dead-letter`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequeueRequest {
    /// The tasks to requeue.
    pub tasks: Vec<TaskRef>,
    /// Check the guards and report what would be requeued, changing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `{requested, requeued, dry_run, tasks}`: `tasks` are those requeued (or, in a dry run,
/// that would be).
#[derive(Debug, Serialize, ToSchema)]
pub struct RequeueResponse {
    requested: usize,
    requeued: usize,
    dry_run: bool,
    tasks: Vec<TaskRef>,
}

/// Lists dead letters, oldest first (`limit` 1..=1000, default 50).
#[utoipa::path(
    get,
    path = "/v1/admin/queue/dead-letter",
    operation_id = "list_dead_letters",
    tag = "admin",
    params(ListQuery),
    responses(
        (status = 200, description = "Dead letters, oldest first", body = DeadLetterList),
        (status = 400, description = "An invalid query", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AdminState>,
    origin: Origin,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "query `limit` must be between 1 and {MAX_LIST}"
        )));
    }
    let dead = s.engine.dead_letters(limit as usize).await?;
    let tasks: Vec<DeadLetterView> = dead
        .into_iter()
        .map(|d| DeadLetterView {
            job_id: d.entry.job_id.to_string(),
            task_id: d.entry.task_id.to_string(),
            tenant: d.entry.tenant.as_str().to_owned(),
            attempt: d.entry.attempt,
            reason: d.reason,
            dead_at: d.dead_at.format(&Rfc3339).unwrap_or_default(),
        })
        .collect();
    audit::record(
        &s.engine,
        &origin,
        Action {
            action: LIST_ACTION,
            resource: RESOURCE,
            result: "ok",
            details: json!({ "limit": limit, "returned": tasks.len() }),
            ..Action::default()
        },
    )
    .await?;
    Ok(Json(DeadLetterList { tasks }))
}

/// Requeues the named dead letters (or, with `dry_run`, reports which it would) once the
/// guards pass. Tasks that are not dead letters are skipped.
#[utoipa::path(
    post,
    path = "/v1/admin/queue/dead-letter",
    operation_id = "requeue_dead_letters",
    tag = "admin",
    request_body = RequeueRequest,
    params(("X-SPLAI-Confirm" = Option<String>, Header, description = "The confirmation token, for batches over the threshold")),
    responses(
        (status = 200, description = "Requeued (or, in a dry run, would be)", body = RequeueResponse),
        (status = 400, description = "No tasks, too many, or a missing confirmation", body = ErrorBody),
        (status = 403, description = "A wrong confirmation token", body = ErrorBody),
        (status = 429, description = "Over the requeue rate limit", body = ErrorBody),
    )
)]
pub async fn requeue(
    State(s): State<AdminState>,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RequeueRequest>,
) -> Result<Json<RequeueResponse>, ApiError> {
    let payload = serde_json::to_vec(&req).unwrap_or_default();
    let n = req.tasks.len();
    let requested = u32::try_from(n).unwrap_or(u32::MAX);
    let action = |result: &'static str, details: serde_json::Value| Action {
        action: REQUEUE_ACTION,
        resource: RESOURCE,
        payload: Some(&payload),
        requested: Some(requested),
        result,
        details,
        ..Action::default()
    };
    if let Err(refusal) = check(&s, &headers, n).await {
        // The refusal is audited; if that write fails, the refusal still stands.
        if let Err(e) = audit::record(
            &s.engine,
            &origin,
            action(
                "rejected",
                json!({ "code": refusal.code, "message": refusal.message, "dry_run": req.dry_run }),
            ),
        )
        .await
        {
            tracing::warn!(error = %e.message, "auditing a refused requeue failed");
        }
        return Err(refusal);
    }
    if req.dry_run {
        let would = would_requeue(&s, &req.tasks).await?;
        audit::record(
            &s.engine,
            &origin,
            action("dry_run", json!({ "would_requeue": would.len() })),
        )
        .await?;
        return Ok(Json(RequeueResponse {
            requested: n,
            requeued: 0,
            dry_run: true,
            tasks: would,
        }));
    }
    let tasks = req.tasks.clone();
    let done = detached(&s.engine, |e| async move {
        e.requeue_dead_letters(&tasks).await
    })
    .await?;
    // The requeue has happened: the audit event is what the rate limit counts, so a failure
    // to write it is logged loudly, but the answer still reports what was done.
    if let Err(e) = audit::record(
        &s.engine,
        &origin,
        action("ok", json!({ "requeued": done.len() })),
    )
    .await
    {
        tracing::error!(error = %e.message, requeued = done.len(), "auditing a requeue failed");
    }
    Ok(Json(RequeueResponse {
        requested: n,
        requeued: done.len(),
        dry_run: false,
        tasks: done,
    }))
}

/// The guards, in order: a non-empty batch, the batch size, the confirmation, the rate limit.
async fn check(s: &AdminState, headers: &HeaderMap, n: usize) -> Result<(), ApiError> {
    let g = &s.requeue;
    if n == 0 {
        return Err(ApiError::invalid("`tasks` must name at least one task"));
    }
    if n > g.max_batch {
        return Err(ApiError::invalid(format!(
            "requeue batch too large: {n} tasks requested, at most {} allowed \
             (SPLAI_ADMIN_REQUEUE_MAX_BATCH)",
            g.max_batch
        )));
    }
    if let Some(token) = &g.confirm_token
        && n > g.confirm_threshold
    {
        match headers.get(CONFIRM_HEADER) {
            None => {
                return Err(ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "confirmation_required",
                    message: format!(
                        "confirmation required: {n} tasks is above \
                         SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD ({}); resend with the \
                         X-SPLAI-Confirm header",
                        g.confirm_threshold
                    ),
                });
            }
            Some(given) if !confirm_matches(given.as_bytes(), token) => {
                return Err(ApiError::forbidden(
                    "invalid confirmation: X-SPLAI-Confirm does not match",
                ));
            }
            Some(_) => {}
        }
    }
    if g.rate_limit_per_min > 0 {
        let used = requeued_last_minute(s).await?;
        if used + n as u64 > g.rate_limit_per_min {
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate_limited",
                message: format!(
                    "requeue rate limit exceeded: {used} tasks requeued in the last minute, \
                     {n} more would pass SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN ({})",
                    g.rate_limit_per_min
                ),
            });
        }
    }
    Ok(())
}

/// Whether the header matches the confirm token: SHA-256 digests compared in constant time,
/// so neither the length nor a prefix of the token leaks through timing.
fn confirm_matches(given: &[u8], token: &Secret) -> bool {
    let a: [u8; 32] = Sha256::digest(given).into();
    let b: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
    crate::auth::ct_eq(&a, &b)
}

/// Tasks requeued in the last minute by every instance sharing this store: the sum of
/// `details.requeued` over the `ok` requeue events in the audit log.
///
/// Check and requeue are not one transaction: two instances checking at the same moment can
/// each see room for their batch and together exceed the limit by at most one batch each.
/// The limit is a brake on runaway operators and scripts, not an exact quota, so this small
/// race is accepted rather than serialising requeues through a store lock.
async fn requeued_last_minute(s: &AdminState) -> Result<u64, ApiError> {
    let from = s.engine.now() - WINDOW;
    let mut total = 0u64;
    let mut offset = 0u32;
    loop {
        let page = s
            .engine
            .backends()
            .audit
            .list(&AuditFilter {
                limit: COUNT_PAGE,
                offset,
                action: Some(REQUEUE_ACTION.to_owned()),
                result: Some("ok".to_owned()),
                from: Some(from),
                ..AuditFilter::default()
            })
            .await
            .map_err(|e| ApiError::from(EngineError::Store(e)))?;
        total += page
            .iter()
            .map(|e| e.event.details["requeued"].as_u64().unwrap_or(0))
            .sum::<u64>();
        if page.len() < COUNT_PAGE as usize {
            return Ok(total);
        }
        offset += COUNT_PAGE;
    }
}

/// Which of `tasks` are dead letters now (what a requeue would move), in request order.
async fn would_requeue(s: &AdminState, tasks: &[TaskRef]) -> Result<Vec<TaskRef>, ApiError> {
    let dead: std::collections::HashSet<TaskRef> = s
        .engine
        .dead_letters(DRY_RUN_SCAN)
        .await?
        .into_iter()
        .map(|d| d.entry.task_ref())
        .collect();
    let mut seen = std::collections::HashSet::new();
    Ok(tasks
        .iter()
        .filter(|t| dead.contains(*t) && seen.insert((*t).clone()))
        .cloned()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirm_compares_the_whole_token() {
        let t = Secret::new("s3cret");
        assert!(confirm_matches(b"s3cret", &t));
        assert!(!confirm_matches(b"s3cre", &t));
        assert!(!confirm_matches(b"s3cretx", &t));
        assert!(!confirm_matches(b"", &t));
    }

    #[test]
    fn the_token_is_redacted_in_debug() {
        let g = RequeueGuards {
            confirm_token: Some(Secret::new("s3cret")),
            ..RequeueGuards::default()
        };
        assert!(!format!("{g:?}").contains("s3cret"));
    }
}
