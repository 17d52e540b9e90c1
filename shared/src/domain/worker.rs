//! Workers: what they register, what they report on heartbeat, and what claims match on.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Timestamp, WorkerId};

/// A model name a worker may advertise to serve every model: the development echo backend
/// answers whatever model a task names, so `splai dev` claims every task.
pub const ANY_MODEL: &str = "*";

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct WorkerRegistration {
    /// CPU cores.
    pub cpu: f64,
    /// Memory in megabytes.
    pub memory_mb: u64,
    /// Whether the host has a GPU.
    pub gpu: bool,
    /// GPU memory in megabytes.
    pub gpu_memory_mb: u64,
    /// Models warm in the worker's cache.
    pub models: Vec<String>,
    /// Tools the worker can run.
    pub tools: Vec<String>,
    /// Model backends the worker offers (`ollama`, `vllm`, `llama.cpp`, `remote_api`, `echo`, ...).
    pub backends: Vec<String>,
    /// Where the worker runs (region, rack, site).
    pub locality: Option<String>,
}

/// Load figures a worker sends with each heartbeat.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Heartbeat {
    /// Tasks waiting inside the worker.
    pub queue_depth: u32,
    /// Tasks running now.
    pub running_tasks: u32,
    /// CPU utilisation, 0.0 to 1.0.
    pub cpu_util: f64,
    /// Memory utilisation, 0.0 to 1.0.
    pub memory_util: f64,
    /// GPU utilisation, 0.0 to 1.0.
    pub gpu_util: f64,
}

/// Health derived from heartbeat age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerHealth {
    /// Heartbeating on time.
    Healthy,
    /// Missed heartbeats; its leases will expire.
    Stale,
}

/// A registered worker as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Worker {
    /// Identifier.
    pub worker_id: WorkerId,
    /// What it registered with.
    #[serde(flatten)]
    pub registration: WorkerRegistration,
    /// Its last reported load.
    #[serde(flatten)]
    pub load: Heartbeat,
    /// Derived from `last_heartbeat` when read.
    pub health: WorkerHealth,
    /// When it registered (or re-registered).
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub registered_at: Timestamp,
    /// Its last heartbeat (or registration).
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_heartbeat: Timestamp,
}

/// What a claim matches queue entries against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerCaps {
    /// The claiming worker.
    pub worker_id: Option<WorkerId>,
    /// Whether it has a GPU.
    pub gpu: bool,
    /// Backends it offers.
    pub backends: BTreeSet<String>,
    /// Models it serves.
    pub models: BTreeSet<String>,
}

impl WorkerCaps {
    /// The capabilities of a registered worker.
    pub fn of(worker_id: &WorkerId, reg: &WorkerRegistration) -> Self {
        Self {
            worker_id: Some(worker_id.clone()),
            gpu: reg.gpu,
            backends: reg.backends.iter().cloned().collect(),
            models: reg.models.iter().cloned().collect(),
        }
    }
}
