//! Stored records for the store backends' own tests: jobs and tasks as a store holds them
//! (not as a client submits them; for those see the parent module), written directly.

use serde_json::json;

use crate::clock::from_millis;
use crate::domain::{
    Constraints, Job, JobId, JobRecord, LeaseId, PlannerMode, Priority, QueueEntry, Requirements,
    Resources, Status, Task, TaskId, TaskType, TenantId, Timestamp, WorkerId,
};

/// `ms` milliseconds after a fixed instant (2026-01-01).
pub fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

/// A job id (panics on an invalid one).
pub fn job_id(s: &str) -> JobId {
    JobId::parse(s).unwrap()
}

/// A stored job of `tenant` and `job_type` in `status`, every optional field empty.
pub fn a_job(id: &str, tenant: &str, job_type: &str, status: Status) -> Job {
    Job {
        job_id: job_id(id),
        tenant: TenantId::parse(tenant).unwrap(),
        job_type: job_type.into(),
        input: json!("hello"),
        policy: None,
        priority: Priority::Standard,
        planner_mode: PlannerMode::Template,
        model: None,
        latency_class: None,
        reasoning_required: false,
        data_classification: None,
        network_isolation: None,
        webhook_url: None,
        metadata: Default::default(),
        status,
        message: String::new(),
        result_artifact_uri: None,
        task_count: 0,
        created_at: at(0),
        updated_at: at(0),
        finished_at: None,
        trace_parent: None,
    }
}

/// A queued `llm_inference` task of `job`.
pub fn a_task(job: &Job, id: &str) -> Task {
    Task {
        task_id: TaskId::parse(id).unwrap(),
        job_id: job.job_id.clone(),
        tenant: job.tenant.clone(),
        priority: job.priority,
        task_type: TaskType::LlmInference,
        inputs: Default::default(),
        dependencies: vec![],
        status: Status::Queued,
        attempt: 0,
        max_retries: 2,
        timeout_sec: 60,
        resources: Resources::default(),
        constraints: Constraints::default(),
        worker_id: None,
        lease_id: None,
        lease_expires: None,
        output_artifact_uri: None,
        output_artifact: None,
        output: None,
        error: None,
        last_report_key: None,
        created_at: at(0),
        updated_at: at(0),
        started_at: None,
        finished_at: None,
    }
}

/// A queued job of tenant `acme` with these queued tasks.
pub fn a_record(id: &str, tasks: &[&str]) -> JobRecord {
    let mut job = a_job(id, "acme", "chat", Status::Queued);
    job.task_count = tasks.len() as u32;
    let tasks = tasks.iter().map(|t| a_task(&job, t)).collect();
    JobRecord { job, tasks }
}

/// A record with every optional field set and awkward values (nested JSON, floats, unicode).
pub fn a_full_record() -> JobRecord {
    let mut job = a_job("job-full", "acme", "batch_analysis", Status::Running);
    job.input = json!({ "prompt": "résumé ✓", "n": [1, 2.5, -3e-7], "nested": { "ok": true } });
    job.policy = Some("strict".into());
    job.priority = Priority::Interactive;
    job.planner_mode = PlannerMode::Hybrid;
    job.model = Some("llama3:8b".into());
    job.latency_class = Some("low".into());
    job.reasoning_required = true;
    job.data_classification = Some("confidential".into());
    job.network_isolation = Some("none".into());
    job.webhook_url = Some("https://example.test/hook".into());
    job.metadata = json!({ "team": "ml", "cost": 0.25 })
        .as_object()
        .cloned()
        .unwrap();
    job.message = "1 of 2 tasks running".into();
    job.result_artifact_uri = Some("artifact://job-full/final".into());
    job.task_count = 2;
    job.updated_at = at(1_234);
    job.finished_at = Some(at(9_999));
    let mut t1 = a_task(&job, "t1");
    t1.task_type = TaskType::ToolExecution;
    t1.inputs = json!({ "cmd": "echo", "temperature": 0.7 })
        .as_object()
        .cloned()
        .unwrap();
    t1.status = Status::Running;
    t1.attempt = 2;
    t1.resources = Resources {
        cpu: 1.5,
        memory_mb: 2048,
        gpu: true,
        gpu_memory_mb: 8192,
    };
    t1.constraints = Constraints {
        locality: Some("eu-west".into()),
        backend: Some("vllm".into()),
        model: Some("llama3:8b".into()),
        worker_id: Some(WorkerId::parse("w-1").unwrap()),
    };
    t1.worker_id = Some(WorkerId::parse("w-1").unwrap());
    t1.lease_id = Some(LeaseId::parse("lease-1").unwrap());
    t1.lease_expires = Some(at(60_000));
    t1.output_artifact_uri = Some("artifact://job-full/t1".into());
    t1.error = Some("first attempt failed".into());
    t1.last_report_key = Some("lease-0:Failed".into());
    t1.updated_at = at(500);
    t1.started_at = Some(at(400));
    t1.finished_at = Some(at(450));
    let mut t2 = a_task(&job, "t2");
    t2.dependencies = vec![t1.task_id.clone()];
    JobRecord {
        job,
        tasks: vec![t1, t2],
    }
}

/// The queue entry of `task`, claimable at once.
pub fn entry_for(task: &Task) -> QueueEntry {
    QueueEntry {
        job_id: task.job_id.clone(),
        task_id: task.task_id.clone(),
        tenant: task.tenant.clone(),
        priority: task.priority,
        requirements: Requirements::default(),
        attempt: 0,
        max_attempts: task.max_attempts(),
        not_before: at(0),
    }
}
