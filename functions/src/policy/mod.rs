//! The policy router: `POST /v1/policy/evaluate` (dry-run a submission against the policy and
//! the model routing) and `GET /v1/policy` (the effective policy and routing), both needing
//! `operator`. A router of its own, so that it can deploy as its own function.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Json, Router};
use serde::Serialize;
use splai_shared::engine::Engine;
use splai_shared::policy::Policy;
use splai_shared::routing::{Route, RoutingTable};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Caller, Permission, Tokens};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::gateway::jobs::SubmitJobRequest;
use crate::openapi::ErrorBody;

/// What the policy handlers can reach. Built once at start-up.
#[derive(Clone)]
pub struct PolicyState {
    /// The engine (its policy, and its planner's routing table).
    pub engine: Arc<Engine>,
    /// API tokens; `None` means auth is off.
    pub auth: Option<Arc<Tokens>>,
}

/// The policy routes, each with the permission it needs: the one place they are authorised
/// and documented.
pub fn routes(tokens: Option<Arc<Tokens>>) -> OpenApiRouter<PolicyState> {
    let g = auth::guarded(tokens);
    OpenApiRouter::new()
        .routes(g(Permission::Operator, routes!(show)))
        .routes(g(Permission::Operator, routes!(evaluate)))
}

/// The policy router over `state`.
pub fn router(state: PolicyState) -> Router {
    let (router, _) = routes(state.auth.clone()).split_for_parts();
    router.with_state(state)
}

/// The effective policy and routing table.
#[derive(Debug, Serialize, ToSchema)]
pub struct Effective {
    /// `null` without `SPLAI_POLICY_FILE`.
    policy: Option<Policy>,
    /// `null` without `SPLAI_ROUTING_FILE`.
    routing: Option<RoutingTable>,
}

/// A dry run's verdict.
#[derive(Debug, Serialize, ToSchema)]
pub struct Evaluation {
    /// Whether the policy allows the job.
    allowed: bool,
    /// The rule that decided, if any (else the default action).
    rule: Option<String>,
    /// Why.
    reason: String,
    /// The model routing would pick (`null` without a routing table).
    route: Option<Route>,
}

/// The effective policy and routing table (`null` for each not configured).
#[utoipa::path(
    get,
    path = "/v1/policy",
    operation_id = "get_policy",
    tag = "policy",
    responses((status = 200, description = "The effective policy and routing table", body = Effective))
)]
pub async fn show(State(s): State<PolicyState>) -> Json<Effective> {
    Json(Effective {
        policy: s.engine.policy().cloned(),
        routing: s.engine.planner().routing().cloned(),
    })
}

/// Dry-runs a submission body (the `POST /v1/jobs` shape): whether the policy would allow it
/// (rules and the tenant's `max_running_jobs`), by which rule and why, and the route model
/// routing would pick. Writes nothing, audit included.
#[utoipa::path(
    post,
    path = "/v1/policy/evaluate",
    operation_id = "evaluate_policy",
    tag = "policy",
    request_body = SubmitJobRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant when the body names none")),
    responses(
        (status = 200, description = "Whether the policy would allow the job, and the route", body = Evaluation),
        (status = 400, description = "An invalid job", body = ErrorBody),
    )
)]
pub async fn evaluate(
    State(s): State<PolicyState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Json<Evaluation>, ApiError> {
    let new = req.into_new_job(&headers, &caller)?;
    let d = s.engine.check_submit(&new).await?;
    let route = s.engine.planner().routing().map(|r| r.route(&new));
    Ok(Json(Evaluation {
        allowed: d.allowed,
        rule: d.rule,
        reason: d.reason,
        route,
    }))
}
