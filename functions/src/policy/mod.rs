//! The policy router: `POST /v1/policy/evaluate` (dry-run a submission against the policy and
//! the model routing) and `GET /v1/policy` (the effective policy and routing), both needing
//! `operator`. A router of its own, so that it can deploy as its own function.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use splai_shared::engine::Engine;

use crate::auth::{self, Caller, Permission, Tokens};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::gateway::jobs::SubmitJobRequest;

/// What the policy handlers can reach. Built once at start-up.
#[derive(Clone)]
pub struct PolicyState {
    /// The engine (its policy, and its planner's routing table).
    pub engine: Arc<Engine>,
    /// API tokens; `None` means auth is off.
    pub auth: Option<Arc<Tokens>>,
}

/// The policy routes, each with the permission it needs: the one place they are authorised.
pub fn router(state: PolicyState) -> Router {
    let g = auth::guarded(state.auth.clone());
    Router::new()
        .route("/v1/policy", g(Permission::Operator, get(show)))
        .route(
            "/v1/policy/evaluate",
            g(Permission::Operator, post(evaluate)),
        )
        .with_state(state)
}

/// The effective policy and routing table (`null` for each not configured).
pub async fn show(State(s): State<PolicyState>) -> Json<Value> {
    Json(json!({
        "policy": s.engine.policy(),
        "routing": s.engine.planner().routing(),
    }))
}

/// Dry-runs a submission body (the `POST /v1/jobs` shape): whether the policy would allow it
/// (rules and the tenant's `max_running_jobs`), by which rule and why, and the route model
/// routing would pick. Writes nothing, audit included.
pub async fn evaluate(
    State(s): State<PolicyState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(req): JsonBody<SubmitJobRequest>,
) -> Result<Json<Value>, ApiError> {
    let new = req.into_new_job(&headers, &caller)?;
    let d = s.engine.check_submit(&new).await?;
    let route = s.engine.planner().routing().map(|r| r.route(&new));
    Ok(Json(json!({
        "allowed": d.allowed,
        "rule": d.rule,
        "reason": d.reason,
        "route": route,
    })))
}
