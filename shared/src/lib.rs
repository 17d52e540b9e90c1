//! SPLAI shared library: the domain, the planner, the execution engine, and the seams
//! (`JobStore`/`WorkerStore`/`DispatchOutbox` and `LeaseQueue`) with their backends.
//!
//! Layout:
//! - [`domain`]: jobs, tasks, workers, queue entries; types only.
//! - [`planner`]: turns a submission into a validated DAG of task specs.
//! - [`routing`]: the model routing table, applied to planned inference tasks.
//! - [`store`], [`queue`]: the traits and one file per backend engine.
//! - [`engine`]: leases, retries, DAG progress, cancel; pure rules plus orchestration.
//! - [`backends`]: the one factory that turns configuration into trait objects.
//! - [`clock`]: the time source the engine reads.

pub mod artifacts;
pub mod aws;
pub mod backends;
pub mod clock;
pub mod domain;
pub mod engine;
pub mod metrics;
pub mod planner;
pub mod policy;
pub mod process;
pub mod queue;
pub mod routing;
pub mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
pub mod yaml_file;
