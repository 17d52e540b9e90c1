//! Gateway integration tests: the real server on an ephemeral port over a real SQLite file,
//! with the tests acting as clients and workers over HTTP.

mod admin;
mod auth;
mod bad_input;
mod bulk;
mod chunks;
mod deadletter;
mod helpers;
mod jobs;
mod metrics;
mod observability;
mod openapi;
mod policy;
mod prefetch;
mod routing;
mod scope_matrix;
mod sweeper;
mod webhooks;
mod workers;
