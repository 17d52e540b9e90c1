//! The admin router: the dead-letter queue (list, guarded requeue), model prefetch, the audit
//! log (list, CSV export, chain verification) and the metrics (JSON and Prometheus text). A
//! router of its own beside the gateway's, so that it can deploy as its own function.

pub mod audit;
pub mod deadletter;
pub mod metrics;
pub mod prefetch;

use std::sync::Arc;

use axum::Router;
use splai_shared::engine::Engine;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

/// The admin routes, each with the permission it needs: the one place they are authorised
/// and documented.
pub fn routes(tokens: Option<Arc<Tokens>>) -> OpenApiRouter<AdminState> {
    use Permission as P;
    let g = auth::guarded(tokens);
    OpenApiRouter::new()
        .routes(g(
            P::Operator,
            routes!(deadletter::list, deadletter::requeue),
        ))
        .routes(g(P::Operator, routes!(prefetch::prefetch)))
        .routes(g(P::Admin, routes!(audit::list)))
        .routes(g(P::Admin, routes!(audit::verify)))
        .routes(g(P::Metrics, routes!(metrics::json)))
        .routes(g(P::Metrics, routes!(metrics::prometheus)))
}

/// The admin router over `state`.
pub fn router(state: AdminState) -> Router {
    let (router, _) = routes(state.auth.clone()).split_for_parts();
    router.with_state(state)
}
