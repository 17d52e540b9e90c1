//! The OpenAI-compatible router (`SPLAI_OPENAI_COMPAT=true`): `POST /v1/chat/completions`
//! (with `stream=true`), `POST /v1/responses`, `POST /v1/embeddings` and `GET /v1/models`.
//! A router of its own, merged into the local server like `admin` and `policy`.
//!
//! Each request becomes an ordinary SPLAI job (so routing, policy, retries and the audit log
//! apply), is awaited up to `SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS`, and is answered in the
//! OpenAI shape. Layout: `translate.rs` (OpenAI shapes ⇄ jobs, pure), `wait.rs` (waiting for
//! a job; cancel when the client leaves), `relay.rs` (streamed tokens as SSE), `chat.rs`,
//! `embeddings.rs`, `models.rs` (the handlers), `error.rs` (the OpenAI error shape).

mod chat;
mod embeddings;
pub mod error;
mod models;
pub mod relay;
pub mod translate;
pub mod wait;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::middleware;
use splai_shared::domain::{NewJob, TenantId};
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::admin::audit::Origin;
use crate::auth::{self, Caller, Permission, Tokens};
use crate::error::ApiError;
use crate::gateway::AppState;
use crate::gateway::jobs::policy_gate;
use wait::CancelOnDrop;

/// The default of `SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS`, as the original.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the OpenAI handlers can reach. Built once at start-up.
#[derive(Clone)]
pub struct OpenAiState {
    /// The gateway's state (engine, artifacts, auth).
    pub app: AppState,
    /// How long a request waits for its job (`SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS`).
    pub timeout: Duration,
}

/// The OpenAI routes, each with the permission it needs: the one place they are authorised
/// and documented. Every error this router answers is reshaped into the OpenAI error shape.
pub fn routes(tokens: Option<Arc<Tokens>>) -> OpenApiRouter<OpenAiState> {
    use Permission as P;
    let g = auth::guarded(tokens);
    let mut r = OpenApiRouter::new()
        .routes(g(P::JobSubmit, routes!(chat::completions)))
        .routes(g(P::JobSubmit, routes!(chat::responses)))
        .routes(g(P::JobSubmit, routes!(embeddings::embeddings)))
        .routes(g(P::JobRead, routes!(models::list)))
        .layer(middleware::map_response(error::reshape));
    crate::openapi::replace_error_schema(r.get_openapi_mut(), error::SCHEMA);
    r
}

/// The OpenAI router over `state`.
pub fn router(state: OpenAiState) -> Router {
    let (router, _) = routes(state.app.auth.clone()).split_for_parts();
    router.with_state(state)
}

/// The tenant a request acts in: `X-SPLAI-Tenant`, else `default`; 403 for one the caller
/// may not act in.
fn tenant(headers: &HeaderMap, caller: &Caller) -> Result<TenantId, ApiError> {
    let tenant = match headers.get("x-splai-tenant") {
        None => TenantId::default_tenant(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|t| TenantId::parse(t).ok())
            .ok_or_else(|| ApiError::invalid("header X-SPLAI-Tenant is not a valid tenant"))?,
    };
    if !caller.may_act_in(&tenant) {
        return Err(ApiError::forbidden(format!(
            "this token may not act in tenant `{tenant}`"
        )));
    }
    Ok(tenant)
}

/// A submitted job being waited for (or relayed).
pub struct Submitted {
    /// The job.
    pub job: splai_shared::domain::JobId,
    /// When it was submitted (the answer's and the chunks' `created`).
    pub created: i64,
    /// Job events, subscribed before the submit so its end cannot be missed.
    pub events: tokio::sync::broadcast::Receiver<std::sync::Arc<splai_shared::engine::JobEvent>>,
    /// Cancels the job unless disarmed.
    pub guard: CancelOnDrop,
}

/// Submits `new` through the policy gate, subscribed to job events first so its end cannot
/// be missed; the guard cancels it unless disarmed.
async fn submit(
    s: &OpenAiState,
    origin: &Origin,
    new: NewJob,
    endpoint: &str,
) -> Result<Submitted, ApiError> {
    policy_gate(&s.app, origin, &new, endpoint).await?;
    let events = s.app.engine.subscribe();
    let done = s.app.engine.submit(new).await?;
    let job = s.app.engine.job(&done.job_id).await?;
    Ok(Submitted {
        guard: CancelOnDrop::new(s.app.engine.clone(), done.job_id.clone()),
        job: done.job_id,
        created: job.created_at.unix_timestamp(),
        events,
    })
}

/// Waits for a submitted job: its record when it completed; 504 (and the job canceled) at
/// the timeout; 502 with the task's error when it failed.
async fn finished(
    s: &OpenAiState,
    sub: &mut Submitted,
) -> Result<splai_shared::domain::JobRecord, ApiError> {
    let deadline = Instant::now() + s.timeout;
    let engine = &s.app.engine;
    let Some(record) = wait::until_finished(engine, &mut sub.events, &sub.job, deadline).await?
    else {
        // The guard cancels it on drop too; canceling here makes it done before we answer.
        let _ = engine.cancel(&sub.job).await;
        sub.guard.disarm();
        return Err(error::timed_out(sub.job.as_str(), s.timeout.as_secs()));
    };
    sub.guard.disarm();
    if record.job.status == splai_shared::domain::Status::Completed {
        Ok(record)
    } else {
        Err(error::job_failed(wait::failure(&record)))
    }
}
