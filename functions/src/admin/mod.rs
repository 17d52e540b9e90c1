//! The admin router: the dead-letter queue (list, guarded requeue), model prefetch, the audit
//! log (list, CSV export, chain verification) and the metrics (JSON and Prometheus text). A
//! router of its own beside the gateway's, so that it can deploy as its own function.

pub mod audit;
pub mod deadletter;
pub mod metrics;
pub mod prefetch;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use splai_shared::engine::Engine;

use self::deadletter::RequeueGuards;
use crate::auth::{self, Permission, Tokens};

/// What every admin handler can reach. Built once at start-up.
#[derive(Clone)]
pub struct AdminState {
    /// The engine (its clock, and its backends' audit log).
    pub engine: Arc<Engine>,
    /// API tokens; `None` means auth is off.
    pub auth: Option<Arc<Tokens>>,
    /// The dead-letter requeue guards (`SPLAI_ADMIN_REQUEUE_*`).
    pub requeue: Arc<RequeueGuards>,
}

/// The admin routes, each with the permission it needs: the one place they are authorised.
pub fn router(state: AdminState) -> Router {
    use Permission as P;
    let g = auth::guarded(state.auth.clone());
    Router::new()
        .route(
            "/v1/admin/queue/dead-letter",
            g(P::Operator, get(deadletter::list).post(deadletter::requeue)),
        )
        .route(
            "/v1/admin/models/prefetch",
            g(P::Operator, post(prefetch::prefetch)),
        )
        .route("/v1/admin/audit", g(P::Admin, get(audit::list)))
        .route("/v1/admin/audit/verify", g(P::Admin, get(audit::verify)))
        .route("/v1/metrics", g(P::Metrics, get(metrics::json)))
        .route(
            "/v1/metrics/prometheus",
            g(P::Metrics, get(metrics::prometheus)),
        )
        .with_state(state)
}
