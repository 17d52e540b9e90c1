//! SPLAI HTTP functions: the gateway router, the local all-in-one server, and the `splai` CLI.
//!
//! Layout:
//! - [`gateway`]: the gateway's axum router and handlers.
//! - [`admin`]: the admin router (dead letters, the audit log, metrics) and
//!   [`admin::audit::record`].
//! - [`http_metrics`]: the request-duration middleware on the whole server.
//! - [`openai`]: the OpenAI-compatible router (`SPLAI_OPENAI_COMPAT=true`).
//! - [`auth`]: tokens, scopes, roles and tenancy; the layer every non-health route runs.
//! - [`error`], [`extract`]: the one API error type and the extractors that produce it.
//! - [`config`]: `SPLAI_*` variables, read once.
//! - [`server`]: state built once, routers nested, sweeper loop, graceful shutdown.
//! - [`dev`]: `splai dev`, the server plus one in-process worker.
//! - [`cli`]: the `splai` command line (server and client commands).
//! - [`webhooks`]: signing, destination rules and the deliverer of job webhooks.
//! - [`retention`]: `SPLAI_JOB_TTL`, pruning finished jobs and their artifacts.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod detach;
pub mod dev;
pub mod error;
pub mod extract;
pub mod gateway;
pub mod http_metrics;
pub mod lambda;
pub mod openai;
pub mod openapi;
pub mod policy;
pub mod retention;
pub mod server;
pub mod sweeper;
pub mod webhooks;
