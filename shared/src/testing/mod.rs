//! Test support shared by every crate: intent-named fixtures, a harness around an engine on a
//! manual clock, and the engine conformance suite every backend combination must pass.

pub mod artifacts;
pub mod audit;
#[cfg(feature = "aws")]
pub mod aws;
pub mod locks;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod records;
#[cfg(feature = "redis")]
pub mod redis;
pub mod retention;
pub mod services;
pub mod suite;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::clock::ManualClock;
use crate::domain::{
    Constraints, NewJob, Priority, Resources, Status, TaskId, TaskRef, TaskSpec, TaskType,
    WorkerId, WorkerRegistration,
};
use crate::engine::{
    Assignment, Backends, Engine, EngineConfig, Report, ReportResult, TaskDefaults,
};
use crate::planner::{Planner, PlannerConfig};
use crate::store::LeaseRenewal;

/// An engine over some backends, on a clock the test moves.
pub struct Harness {
    /// The engine under test.
    pub engine: Arc<Engine>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    _keep: Option<Box<dyn std::any::Any + Send>>,
}

/// What a suite setup returns: a harness, or none when its service is missing (skipped).
pub trait IntoHarness {
    /// The harness to run the case on, if any.
    fn into_harness(self) -> Option<Harness>;
}

impl IntoHarness for Harness {
    fn into_harness(self) -> Option<Harness> {
        Some(self)
    }
}

impl IntoHarness for Option<Harness> {
    fn into_harness(self) -> Option<Harness> {
        self
    }
}

/// Lease length used by the suite.
pub const LEASE: Duration = Duration::from_secs(10);

impl Harness {
    /// A harness over `backends`; `keep` holds anything that must outlive it (a temp dir).
    pub fn new(backends: Backends, keep: Option<Box<dyn std::any::Any + Send>>) -> Self {
        Self::with_config(backends, keep, |_| {})
    }

    /// A harness whose engine settings `tune` changes from the suite's (a lease of a second
    /// or two, for a queue whose leases run out in real time: SQS).
    pub fn with_config(
        backends: Backends,
        keep: Option<Box<dyn std::any::Any + Send>>,
        tune: impl FnOnce(&mut EngineConfig),
    ) -> Self {
        let clock = Arc::new(ManualClock::new());
        let mut config = EngineConfig {
            lease: LEASE,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(4),
            task_defaults: TaskDefaults {
                max_retries: 2,
                timeout_sec: 60,
            },
            poll_interval: Duration::from_millis(10),
            ..EngineConfig::default()
        };
        tune(&mut config);
        let planner = Planner::new(PlannerConfig {
            llm_endpoint: None,
            llm_api_key: None,
            llm_timeout: Duration::from_secs(1),
            max_tasks: 1000,
        });
        let engine = Arc::new(Engine::new(backends, planner, clock.clone(), config));
        Self {
            engine,
            clock,
            _keep: keep,
        }
    }

    /// Registers a CPU worker with the `echo` backend.
    pub async fn cpu_worker(&self, id: &str) -> WorkerId {
        self.worker(
            id,
            WorkerRegistration {
                backends: vec!["echo".into()],
                cpu: 4.0,
                ..Default::default()
            },
        )
        .await
    }

    /// Registers a worker.
    pub async fn worker(&self, id: &str, reg: WorkerRegistration) -> WorkerId {
        let id = WorkerId::parse(id).expect("valid worker id");
        self.engine
            .register_worker(&id, &reg)
            .await
            .expect("register");
        id
    }

    /// Claims without waiting.
    pub async fn claim(&self, worker: &WorkerId, max: usize) -> Vec<Assignment> {
        self.engine
            .assign(worker, max, Duration::ZERO)
            .await
            .expect("assign")
    }

    /// Reports success with an output URI derived from the task.
    pub async fn complete(&self, a: &Assignment) -> ReportResult {
        let uri = format!("artifact://{}/{}/output.json", a.job_id, a.task_id);
        self.report(a, Status::Completed, Some(uri), None, true)
            .await
    }

    /// Reports a failure.
    pub async fn fail(&self, a: &Assignment, retryable: bool) -> ReportResult {
        self.report(a, Status::Failed, None, Some("boom".into()), retryable)
            .await
    }

    async fn report(
        &self,
        a: &Assignment,
        status: Status,
        uri: Option<String>,
        error: Option<String>,
        retryable: bool,
    ) -> ReportResult {
        let report = report_for(a, status, uri, error, retryable);
        self.engine
            .report(&[report])
            .await
            .expect("report")
            .remove(0)
    }

    /// Heartbeats for these assignments.
    pub async fn heartbeat(
        &self,
        worker: &WorkerId,
        held: &[&Assignment],
    ) -> crate::engine::HeartbeatReply {
        let leases: Vec<LeaseRenewal> = held
            .iter()
            .map(|a| LeaseRenewal {
                task: TaskRef {
                    job_id: a.job_id.clone(),
                    task_id: a.task_id.clone(),
                },
                lease_id: a.lease_id.clone(),
            })
            .collect();
        self.engine
            .heartbeat(worker, &Default::default(), &leases)
            .await
            .expect("heartbeat")
    }

    /// Hands these assignments back from `worker`.
    pub async fn release(
        &self,
        worker: &WorkerId,
        held: &[&Assignment],
    ) -> Vec<crate::engine::ReleaseOutcome> {
        let leases: Vec<LeaseRenewal> = held
            .iter()
            .map(|a| LeaseRenewal {
                task: TaskRef {
                    job_id: a.job_id.clone(),
                    task_id: a.task_id.clone(),
                },
                lease_id: a.lease_id.clone(),
            })
            .collect();
        self.engine.release(worker, &leases).await.expect("release")
    }

    /// Moves time forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
}

/// A report for an assignment, keyed by lease so a repeat is a duplicate.
pub fn report_for(
    a: &Assignment,
    status: Status,
    uri: Option<String>,
    error: Option<String>,
    retryable: bool,
) -> Report {
    Report {
        task: TaskRef {
            job_id: a.job_id.clone(),
            task_id: a.task_id.clone(),
        },
        lease_id: a.lease_id.clone(),
        idempotency_key: format!("{}:{}", a.lease_id, status.as_str()),
        status,
        output_artifact_uri: uri,
        output_artifact: None,
        output: None,
        error,
        retryable,
    }
}

/// A task spec of type `llm_inference` with these dependencies.
pub fn a_task(id: &str, deps: &[&str]) -> TaskSpec {
    TaskSpec {
        task_id: TaskId::parse(id).expect("valid task id"),
        task_type: TaskType::LlmInference,
        inputs: json!({ "prompt": format!("do {id}") })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        dependencies: deps
            .iter()
            .map(|d| TaskId::parse(*d).expect("valid dep id"))
            .collect(),
        max_retries: None,
        timeout_sec: None,
        resources: Resources::default(),
        constraints: Constraints::default(),
    }
}

/// A job whose DAG is `tasks`.
pub fn a_job_with(tasks: Vec<TaskSpec>) -> NewJob {
    NewJob {
        job_type: "chat".into(),
        input: json!("hello"),
        tasks: Some(tasks),
        ..Default::default()
    }
}

/// The three-task chain `a -> b -> c`.
pub fn a_chain_job() -> NewJob {
    a_job_with(vec![
        a_task("a", &[]),
        a_task("b", &["a"]),
        a_task("c", &["b"]),
    ])
}

/// A one-task job.
pub fn a_single_task_job() -> NewJob {
    a_job_with(vec![a_task("only", &[])])
}

/// A one-task job in a priority class.
pub fn a_job_in_class(priority: Priority) -> NewJob {
    NewJob {
        priority,
        ..a_single_task_job()
    }
}

/// A one-task job whose task is allowed `retries` retries.
pub fn a_retryable_job(retries: u32) -> NewJob {
    let mut t = a_task("flaky", &[]);
    t.max_retries = Some(retries);
    a_job_with(vec![t])
}

/// A job whose first task always fails with no retries, with a dependent.
pub fn a_poison_job() -> NewJob {
    let mut t = a_task("poison", &[]);
    t.max_retries = Some(0);
    a_job_with(vec![t, a_task("after", &["poison"])])
}
