//! `localstack/init/ready.d/splai-init.sh` against the AWS emulator: it creates the queues,
//! table and bucket exactly as the code itself would (and as `infra/template.yaml` declares
//! them), and the real server runs jobs on them without creating anything
//! (`SPLAI_AWS_CREATE_RESOURCES=false`, as deployed).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use splai_shared::testing::aws::TestAws;
use splai_shared::testing::services::{Service, locate};

use crate::{Fabric, all_complete_nothing_dead, submit_batch};

/// The init script in the checkout.
fn init_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../localstack/init/ready.d/splai-init.sh")
}

/// Whether the `aws` CLI the script needs is on PATH; without it the test is skipped, or
/// fails when `CI` is set (`.ci/run` installs it).
fn aws_cli_present(test: &str) -> bool {
    let found = Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: no `aws` CLI on PATH (CI is set, so this fails instead of skipping)"
        );
        eprintln!("SKIPPED {test}: no `aws` CLI on PATH (pip install awscli)");
    }
    found
}

/// The variables SPLAI and the script read for the names under `base`.
fn names(base: &str) -> [(&'static str, String); 3] {
    [
        ("SPLAI_SQS_QUEUE_PREFIX", base.to_owned()),
        ("SPLAI_DYNAMODB_TABLE", base.to_owned()),
        ("SPLAI_S3_BUCKET", format!("{base}-artifacts")),
    ]
}

/// Runs the `aws` CLI against the emulator; its JSON answer.
#[track_caller]
fn aws(endpoint: &str, args: &[&str]) -> Value {
    let out = Command::new("aws")
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_PAGER", "")
        .output()
        .expect("run aws");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or(Value::Null)
}

/// What the store depends on in a table: keys, attribute types, indexes with their keys and
/// projections (the projected attributes sorted), billing mode and TTL.
fn table_shape(endpoint: &str, table: &str) -> Value {
    let query = "Table.{keys: KeySchema, \
         attributes: sort_by(AttributeDefinitions, &AttributeName), \
         billing: BillingModeSummary.BillingMode, \
         lsi: sort_by(LocalSecondaryIndexes, &IndexName)[].{name: IndexName, keys: KeySchema, \
           projection: Projection.ProjectionType, \
           projected: sort(Projection.NonKeyAttributes || `[]`)}, \
         gsi: sort_by(GlobalSecondaryIndexes, &IndexName)[].{name: IndexName, keys: KeySchema, \
           projection: Projection.ProjectionType, \
           projected: sort(Projection.NonKeyAttributes || `[]`)}}";
    let mut shape = aws(
        endpoint,
        &[
            "dynamodb",
            "describe-table",
            "--table-name",
            table,
            "--query",
            query,
        ],
    );
    shape["ttl"] = aws(
        endpoint,
        &["dynamodb", "describe-time-to-live", "--table-name", table],
    )["TimeToLiveDescription"]
        .clone();
    shape
}

/// The settings of the queues under `prefix` that the SQS queue relies on, with the
/// dead-letter target named relative to the prefix.
fn queue_shape(endpoint: &str, prefix: &str) -> Value {
    let mut shape = json!({});
    for class in ["interactive", "standard", "batch", "dead"] {
        let name = format!("{prefix}-{class}");
        let url = aws(endpoint, &["sqs", "get-queue-url", "--queue-name", &name])["QueueUrl"]
            .as_str()
            .expect("a queue URL")
            .to_owned();
        let attrs = aws(
            endpoint,
            &[
                "sqs",
                "get-queue-attributes",
                "--queue-url",
                &url,
                "--attribute-names",
                "MessageRetentionPeriod",
                "VisibilityTimeout",
                "RedrivePolicy",
            ],
        )["Attributes"]
            .clone();
        let redrive = attrs["RedrivePolicy"].as_str().map(|p| {
            let p: Value = serde_json::from_str(p).expect("a redrive policy");
            let target = p["deadLetterTargetArn"].as_str().unwrap_or_default();
            json!({
                // Emulators answer a number or a string; the count is what matters.
                "maxReceiveCount": p["maxReceiveCount"].to_string().trim_matches('"'),
                "target": target.rsplit(':').next().map(|n| n.replacen(prefix, "<prefix>", 1)),
            })
        });
        shape[class] = json!({
            "retention": attrs["MessageRetentionPeriod"],
            "visibility": attrs["VisibilityTimeout"],
            "redrive": redrive,
        });
    }
    shape
}

/// What `infra/template.yaml` declares for the table and queues, in the shapes above (read by
/// `infra/check-template.py --shapes`, which needs `python3` with `cfn-lint`); `None`, after
/// saying why, when that cannot run outside CI.
fn template_shapes(test: &str) -> Option<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("infra/check-template.py"))
        .arg("--shapes")
        .arg(root.join("infra/template.yaml"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            Some(serde_json::from_slice(&o.stdout).expect("shapes as JSON"))
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: infra/check-template.py --shapes failed: {why}"
            );
            eprintln!("SKIPPED the template part of {test}: {why}");
            None
        }
    }
}

/// The server's environment: DynamoDB, SQS and S3 (presigned uploads, nothing inline, so
/// outputs land in the bucket) on the emulator, with the names under `base`.
fn server_env(endpoint: &str, base: &str, create: bool) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = [
        ("SPLAI_STORE", "dynamodb"),
        ("SPLAI_QUEUE", "sqs"),
        ("SPLAI_ARTIFACT_BACKEND", "s3"),
        ("SPLAI_ARTIFACT_UPLOAD", "presigned"),
        ("SPLAI_S3_FORCE_PATH_STYLE", "true"),
        ("SPLAI_MAX_INLINE_OUTPUT_BYTES", "0"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .map(|(k, v)| (k, v.to_owned()))
    .into();
    env.push(("AWS_ENDPOINT_URL", endpoint.to_owned()));
    env.push(("SPLAI_AWS_CREATE_RESOURCES", create.to_string()));
    env.extend(names(base));
    env
}

/// Fails showing both as indented JSON, so the difference is easy to find.
#[track_caller]
fn assert_same(left: &Value, right: &Value, left_name: &str, right_name: &str) {
    let show = |v| serde_json::to_string_pretty(v).expect("JSON");
    assert!(
        left == right,
        "{left_name}:\n{}\n{right_name}:\n{}",
        show(left),
        show(right)
    );
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The init script makes, and the SAM template declares, the same table (keys, indexes,
/// projections, TTL) and queues (retention, redrive to the dead-letter queue) as the server
/// makes with `SPLAI_AWS_CREATE_RESOURCES=true`; a server that may not create anything then runs jobs on
/// them through a worker, with every output stored in the script's bucket.
#[tokio::test]
async fn init_script_creates_what_the_aws_backends_expect() {
    let test = "init_script_creates_what_the_aws_backends_expect";
    let Some(endpoint) = locate(Service::Aws, test) else {
        return;
    };
    if !aws_cli_present(test) {
        return;
    }
    // Arrange: the script's resources, and the code's own under other names.
    let scripted = TestAws::unique("splai-ls");
    let out = Command::new("bash")
        .arg(init_script())
        .envs(names(&scripted))
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .expect("run the init script");
    assert!(
        out.status.success(),
        "splai-init.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = TestAws::unique("splai-ref");
    drop(Fabric::start(&borrowed(&server_env(
        &endpoint, &reference, true,
    ))));

    // Assert: the same shapes, from the script, the code and the SAM template.
    let code_table = table_shape(&endpoint, &reference);
    let code_queues = queue_shape(&endpoint, &reference);
    assert_same(
        &table_shape(&endpoint, &scripted),
        &code_table,
        "table the script made",
        "table table.rs made",
    );
    let queues = queue_shape(&endpoint, &scripted);
    assert_same(
        &queues,
        &code_queues,
        "queues the script made",
        "queues setup.rs made",
    );
    let redrive = &queues["standard"]["redrive"];
    assert_eq!(redrive["target"], "<prefix>-dead", "{redrive}");
    if let Some(template) = template_shapes(test) {
        assert_same(
            &template["table"],
            &code_table,
            "table in infra/template.yaml",
            "table table.rs made",
        );
        assert_same(
            &template["queues"],
            &code_queues,
            "queues in infra/template.yaml",
            "queues setup.rs made",
        );
    }

    // Act: jobs through a server that must find everything in place.
    let fabric = Fabric::start(&borrowed(&server_env(&endpoint, &scripted, false)));
    let _worker = fabric
        .worker("w-localstack", &[("SPLAI_WORKER_BACKENDS", "echo")])
        .await;
    let jobs = submit_batch(&fabric.server.base, 5).await;

    // Assert: all done, nothing dead, outputs in the script's bucket, listings through the
    // indexes.
    all_complete_nothing_dead(&fabric, &jobs).await;
    let task = fabric.api.task(&jobs[0], "noop").await;
    assert_eq!(task["output_artifact"]["type"], "s3", "{task}");
    let bucket = format!("{scripted}-artifacts");
    let objects = aws(
        &endpoint,
        &["s3api", "list-objects-v2", "--bucket", &bucket],
    );
    let keys: Vec<&str> = objects["Contents"]
        .as_array()
        .map(|c| c.iter().filter_map(|o| o["Key"].as_str()).collect())
        .unwrap_or_default();
    for job in &jobs {
        let key = format!("{job}/noop/output.json");
        assert!(keys.contains(&key.as_str()), "no {key} in {keys:?}");
    }
    let listed: Value = reqwest::get(format!(
        "{}/v1/jobs?status=Completed&limit=100",
        fabric.server.base
    ))
    .await
    .expect("list jobs")
    .json()
    .await
    .expect("a job list");
    let listed = listed.to_string();
    assert!(jobs.iter().all(|j| listed.contains(j.as_str())), "{listed}");
}
