//! Fixtures for executor unit tests: a task, executors over a temporary directory, and a
//! stored dependency output.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use splai_shared::artifacts::ArtifactKey;
use splai_shared::artifacts::local::LocalArtifactStore;
use splai_shared::domain::{JobId, LeaseId, TaskId, TaskType, TenantId};
use splai_shared::engine::Assignment;

use super::Executors;
use crate::config::{Config, ExecutorConfig, ToolNetwork};
use crate::models::{EchoBackend, ModelBackends};

/// The job every fixture task belongs to.
pub(crate) const JOB: &str = "job-1";

/// A first attempt of task `t1` of type `task_type` with `inputs` (a JSON object).
pub(crate) fn a_task(task_type: TaskType, inputs: Value) -> Assignment {
    let Value::Object(inputs) = inputs else {
        panic!("task inputs are a JSON object");
    };
    Assignment {
        job_id: JobId::parse(JOB).unwrap(),
        task_id: TaskId::parse("t1").unwrap(),
        lease_id: LeaseId::parse("lease-1").unwrap(),
        lease_expires: time::OffsetDateTime::now_utc(),
        attempt: 1,
        max_retries: 2,
        task_type,
        inputs,
        timeout_sec: 60,
        resources: Default::default(),
        constraints: Default::default(),
        tenant: TenantId::parse("default").unwrap(),
        priority: Default::default(),
        job_type: "chat".to_owned(),
        model: None,
        traceparent: None,
        output_upload: None,
    }
}

/// Executors with the echo backend, artifacts, sandboxes and model cache in a temporary
/// directory (kept alive by the returned guard), the host network for tools, and `tune`
/// applied to the configuration.
pub(crate) fn executors(tune: impl FnOnce(&mut ExecutorConfig)) -> (Executors, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_lookup(|_| None).unwrap().executors;
    config.sandbox_root = dir.path().join("sandboxes");
    config.model_cache_dir = dir.path().join("models");
    config.tool_network = ToolNetwork::Host;
    tune(&mut config);
    let ex = Executors {
        models: ModelBackends::new().with(Arc::new(EchoBackend)),
        artifacts: Arc::new(LocalArtifactStore::new(dir.path().join("artifacts"))),
        config: Arc::new(config),
        http: reqwest::Client::new(),
        gateway: None,
    };
    (ex, dir)
}

/// Stores `output` as task `task_id`'s output and returns its URI.
pub(crate) async fn store_output(ex: &Executors, task_id: &str, output: Value) -> String {
    let key = ArtifactKey::new(
        JobId::parse(JOB).unwrap(),
        TaskId::parse(task_id).unwrap(),
        "output.json",
    )
    .unwrap();
    let body = Bytes::from(serde_json::to_vec(&output).unwrap());
    ex.artifacts
        .put(&key, body, "application/json")
        .await
        .unwrap();
    key.uri()
}
