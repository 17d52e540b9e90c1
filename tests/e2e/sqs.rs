//! `SPLAI_QUEUE=sqs` under the real server and workers, against the AWS emulator: the queues
//! are created at start-up, and a worker killed mid-task loses no work.

use std::time::Duration;

use splai_shared::testing::aws::TestAws;
use splai_shared::testing::services::{Service, locate};

use crate::{Fabric, all_complete_nothing_dead, submit_batch};

/// Jobs run end to end through SQS (configured only by the standard AWS variables and
/// `SPLAI_SQS_QUEUE_PREFIX`), including the tasks of a worker killed mid-run, whose leases
/// run out and are delivered again to the other worker; nothing is dead-lettered.
#[tokio::test]
async fn sqs_queue_runs_jobs_and_survives_a_killed_worker() {
    let Some(endpoint) = locate(Service::Aws, "sqs_queue_runs_jobs") else {
        return;
    };
    let prefix = TestAws::unique("splai-e2e");
    let fabric = Fabric::start(&[
        ("SPLAI_QUEUE", "sqs"),
        ("SPLAI_SQS_QUEUE_PREFIX", &prefix),
        ("SPLAI_AWS_CREATE_RESOURCES", "true"),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        // Short leases: the killed worker's tasks come back soon.
        ("SPLAI_LEASE_SECONDS", "2"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
        ("SPLAI_SWEEP_INTERVAL_MS", "200"),
    ]);
    let echo = [
        ("SPLAI_WORKER_BACKENDS", "echo"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ];
    let doomed = fabric.worker("w-sqs-doomed", &echo).await;
    let _survivor = fabric.worker("w-sqs-survivor", &echo).await;
    let mut jobs = submit_batch(&fabric.server.base, 60).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(doomed);
    jobs.extend(submit_batch(&fabric.server.base, 40).await);
    all_complete_nothing_dead(&fabric, &jobs).await;
}
