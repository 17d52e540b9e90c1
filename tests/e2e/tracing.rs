//! One trace from submit to execution: the server and a worker process export their spans to
//! a collector double, and the worker's execution of the task sits in the submit request's
//! trace, under the caller's own span.

use std::time::Duration;

use serde_json::{Value, json};
use splai_e2e::otlp_collector::{Collector, Span};

use crate::{Fabric, JOB_LIMIT};

/// The caller's trace and span, as a W3C `traceparent` would carry them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_job_is_one_trace_from_submit_to_the_workers_execution() {
    let collector = Collector::start().await;
    let otel = [
        ("SPLAI_OTEL_EXPORTER", "otlphttp"),
        ("SPLAI_OTEL_ENDPOINT", collector.url()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export finished spans every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let fabric = Fabric::start(&otel);
    let mut worker_env = otel.to_vec();
    worker_env.push(("SPLAI_WORKER_BACKENDS", "echo"));
    let _worker = fabric.worker("w-trace", &worker_env).await;

    let job = json!({
        "type": "traced",
        "tasks": [{ "task_id": "t1", "type": "llm_inference",
                    "inputs": { "prompt": "hi" }, "constraints": { "backend": "echo" } }],
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/jobs", fabric.server.base))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&job)
        .send()
        .await
        .expect("submit");
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.expect("JSON");
    let job_id = body["job_id"].as_str().expect("job id").to_owned();
    let done = fabric.api.finished(&job_id, JOB_LIMIT).await;
    assert_eq!(done["status"], "Completed", "{done}");

    let in_trace = |name: &str, service: &str| {
        collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == TRACE_ID && s.name == name && s.service == service)
            .collect::<Vec<Span>>()
    };
    let submits = || -> Vec<Span> {
        in_trace("request", "splai")
            .into_iter()
            .filter(|s| s.parent_span_id == CALLER_SPAN)
            .collect()
    };
    // Each process exports on its own schedule: wait for the last span of each (under a
    // loaded machine the worker's have been seen to arrive first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while in_trace("executor.run", "splai-worker").is_empty() || submits().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spans were not exported within 15 s; received: {:#?}",
            collector.spans()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The submit request: a child of the caller's span.
    let submits = submits();
    assert_eq!(submits.len(), 1, "{:#?}", collector.spans());
    let submit = &submits[0];
    assert!(
        in_trace("engine.submit", "splai")
            .iter()
            .any(|s| s.parent_span_id == submit.span_id),
        "the engine's submit step is inside the request: {:#?}",
        collector.spans()
    );
    // The worker's execution: a child of the submit request, in another process.
    let executions = in_trace("task.execute", "splai-worker");
    assert_eq!(executions.len(), 1, "{:#?}", collector.spans());
    assert_eq!(executions[0].parent_span_id, submit.span_id);
    assert!(
        in_trace("executor.run", "splai-worker")
            .iter()
            .any(|s| s.parent_span_id == executions[0].span_id),
        "the executor call is inside the execution: {:#?}",
        collector.spans()
    );
}
