//! The local server's configuration, read once from `SPLAI_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use splai_shared::artifacts::s3::S3Config;
use splai_shared::artifacts::{ArtifactBackend, ArtifactUpload};
use splai_shared::aws::AwsSettings;
use splai_shared::backends::{
    BackendConfig, DEFAULT_POSTGRES_MAX_CONNECTIONS, RedisConfig, Secret,
};
use splai_shared::engine::{EngineConfig, TaskDefaults};
use splai_shared::planner::PlannerConfig;
use splai_shared::policy::Policy;
use splai_shared::routing::RoutingTable;

use crate::admin::deadletter::RequeueGuards;
use crate::auth::Tokens;
use crate::webhooks::WebhookConfig;
use crate::webhooks::address::Destinations;

/// Everything `splai serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Store and queue selection.
    pub backends: BackendConfig,
    /// Engine tunables.
    pub engine: EngineConfig,
    /// Planner settings.
    pub planner: PlannerConfig,
    /// Where to listen (`SPLAI_GATEWAY_PORT`, default 8080, on all interfaces).
    pub listen: SocketAddr,
    /// Largest accepted request body (`SPLAI_MAX_BODY_BYTES`, default 4 MiB).
    pub max_body_bytes: usize,
    /// Artifact store (`SPLAI_ARTIFACT_BACKEND`, default `local`).
    pub artifact_backend: ArtifactBackend,
    /// Local artifact root (`SPLAI_ARTIFACT_ROOT`, default `/tmp/splai-artifacts`).
    pub artifact_root: PathBuf,
    /// The S3/MinIO artifact settings (`SPLAI_S3_*`, `SPLAI_MINIO_*`), used with
    /// `SPLAI_ARTIFACT_BACKEND=s3|minio`.
    pub artifact_s3: S3Config,
    /// How workers put outputs stored as artifacts (`SPLAI_ARTIFACT_UPLOAD`, default
    /// `direct`; `presigned` hands each assignment an upload URL and needs S3/MinIO).
    pub artifact_upload: ArtifactUpload,
    /// How often expired leases are swept (`SPLAI_SWEEP_INTERVAL_MS`, default 1000).
    pub sweep_interval: Duration,
    /// How long a scheduled sweeper pass (the `sweeper` function) holds the store's sweeper
    /// lock at most, so that a copy that died loses it (`SPLAI_SWEEP_LOCK_SECONDS`, default
    /// 60: the function's timeout).
    pub sweep_lock: Duration,
    /// How long terminal jobs and their artifacts are kept after they finish (`SPLAI_JOB_TTL`:
    /// seconds, or with a unit `s`, `m`, `h`, `d`, e.g. `720h`, `30d`); `None`, unset or `0`,
    /// keeps them forever (the default). See [`crate::retention`].
    pub job_ttl: Option<Duration>,
    /// Largest task output a report may carry inline (`SPLAI_MAX_INLINE_OUTPUT_BYTES`, default
    /// 65536); larger outputs go to the artifact store. Workers learn it at registration.
    pub max_inline_output_bytes: usize,
    /// API tokens with their scopes (`SPLAI_API_TOKENS`, `SPLAI_API_ROLES`,
    /// `SPLAI_API_TOKEN_ROLES`); `None`, auth off, unless `SPLAI_API_TOKENS` is set. Its `Debug`
    /// shows fingerprints only.
    pub auth: Option<Arc<Tokens>>,
    /// The model routing table (`SPLAI_MODEL_ROUTING_FILE`), read and parsed here, once; `None`
    /// when the variable is unset, and tasks then carry only what the job names.
    pub routing: Option<Arc<RoutingTable>>,
    /// The policy (`SPLAI_POLICY_FILE`), read and parsed here, once; `None` when the variable
    /// is unset, and every submit and assignment is allowed as before.
    pub policy: Option<Arc<Policy>>,
    /// Dead-letter requeue guards (`SPLAI_ADMIN_REQUEUE_MAX_BATCH`, `_RATE_LIMIT_PER_MIN`,
    /// `_CONFIRM_THRESHOLD`, `_CONFIRM_TOKEN`).
    pub admin_requeue: RequeueGuards,
    /// Webhook signing, retries and destination rules (`SPLAI_WEBHOOK_*`).
    pub webhooks: WebhookConfig,
    /// Whether the OpenAI-compatible routes are served (`SPLAI_OPENAI_COMPAT`, default
    /// `false`; `splai dev` turns it on unless the variable says otherwise).
    pub openai_compat: bool,
    /// How long an OpenAI-compatible request waits for its job
    /// (`SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS`, default 60).
    pub openai_timeout: Duration,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// A variable with an invalid value, named in the message.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get`, so tests need not touch the environment.
    ///
    /// # Errors
    /// A variable with an invalid value, named in the message.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let backends = BackendConfig {
            store: parse_or(&var, "SPLAI_STORE", Default::default())?,
            queue: parse_or(&var, "SPLAI_QUEUE", Default::default())?,
            sqlite_path: var("SPLAI_SQLITE_PATH")
                .map_or_else(|| BackendConfig::default().sqlite_path, PathBuf::from),
            redis: redis_config(&var)?,
            postgres_dsn: var("SPLAI_POSTGRES_DSN").map(Secret::new),
            postgres_max_connections: parse_or(
                &var,
                "SPLAI_POSTGRES_MAX_CONNECTIONS",
                DEFAULT_POSTGRES_MAX_CONNECTIONS,
            )?,
            aws: aws_settings(&var)?,
        };
        backends.validate()?;
        let secs = |k: &str, d: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(parse_or(&var, k, d)?))
        };
        let millis = |k: &str, d: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(parse_or(&var, k, d)?))
        };
        let lease = secs("SPLAI_LEASE_SECONDS", 15)?;
        let heartbeat_interval = secs("SPLAI_HEARTBEAT_SECONDS", 5)?;
        if lease.is_zero() || heartbeat_interval.is_zero() {
            bail!("SPLAI_LEASE_SECONDS and SPLAI_HEARTBEAT_SECONDS must be at least 1");
        }
        if heartbeat_interval >= lease {
            bail!(
                "SPLAI_HEARTBEAT_SECONDS ({}) must be shorter than SPLAI_LEASE_SECONDS ({})",
                heartbeat_interval.as_secs(),
                lease.as_secs()
            );
        }
        let engine = EngineConfig {
            lease,
            heartbeat_interval,
            worker_stale_after: heartbeat_interval * 3,
            retry_base: millis("SPLAI_RETRY_BASE_MS", 1000)?,
            retry_max: millis("SPLAI_RETRY_MAX_MS", 60_000)?,
            task_defaults: TaskDefaults {
                max_retries: parse_or(&var, "SPLAI_DEFAULT_MAX_RETRIES", 3)?,
                timeout_sec: parse_or(&var, "SPLAI_DEFAULT_TASK_TIMEOUT_SECONDS", 300)?,
            },
            max_wait: secs("SPLAI_MAX_WAIT_SECONDS", 30)?,
            poll_interval: Duration::from_millis(500),
            reconcile_after: secs("SPLAI_RECONCILE_AFTER_SECONDS", 60)?,
            metrics_label_cap: parse_or(
                &var,
                "SPLAI_METRICS_LABEL_CAP",
                splai_shared::metrics::DEFAULT_LABEL_CAP,
            )?,
        };
        let planner = PlannerConfig {
            llm_endpoint: var("SPLAI_LLM_PLANNER_ENDPOINT"),
            llm_api_key: var("SPLAI_LLM_PLANNER_API_KEY"),
            llm_timeout: secs("SPLAI_LLM_PLANNER_TIMEOUT_SECONDS", 10)?,
            max_tasks: parse_or(&var, "SPLAI_MAX_TASKS_PER_JOB", 1000)?,
        };
        let port: u16 = parse_or(&var, "SPLAI_GATEWAY_PORT", 8080)?;
        let artifact_backend = parse_or(&var, "SPLAI_ARTIFACT_BACKEND", ArtifactBackend::Local)?;
        let artifact_upload = parse_or(&var, "SPLAI_ARTIFACT_UPLOAD", ArtifactUpload::Direct)?;
        if artifact_upload == ArtifactUpload::Presigned
            && artifact_backend == ArtifactBackend::Local
        {
            bail!("SPLAI_ARTIFACT_UPLOAD=presigned needs SPLAI_ARTIFACT_BACKEND=s3 or minio");
        }
        Ok(Self {
            backends,
            engine,
            planner,
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
            max_body_bytes: parse_or(&var, "SPLAI_MAX_BODY_BYTES", 4 * 1024 * 1024)?,
            artifact_backend,
            artifact_root: var("SPLAI_ARTIFACT_ROOT")
                .map_or_else(|| PathBuf::from("/tmp/splai-artifacts"), PathBuf::from),
            artifact_s3: S3Config::from_vars(artifact_backend == ArtifactBackend::Minio, &var)?,
            artifact_upload,
            sweep_interval: millis("SPLAI_SWEEP_INTERVAL_MS", 1000)?,
            sweep_lock: {
                let hold = secs("SPLAI_SWEEP_LOCK_SECONDS", 60)?;
                if hold.is_zero() {
                    bail!("SPLAI_SWEEP_LOCK_SECONDS must be at least 1");
                }
                hold
            },
            job_ttl: match var("SPLAI_JOB_TTL") {
                None => None,
                Some(v) => crate::retention::parse_ttl(&v)
                    .map_err(|e| anyhow::anyhow!("invalid SPLAI_JOB_TTL=`{v}`: {e}"))?,
            },
            max_inline_output_bytes: parse_or(&var, "SPLAI_MAX_INLINE_OUTPUT_BYTES", 65_536)?,
            auth: Tokens::from_vars(
                var("SPLAI_API_TOKENS").as_deref(),
                var("SPLAI_API_ROLES").as_deref(),
                var("SPLAI_API_TOKEN_ROLES").as_deref(),
            )?
            .map(Arc::new),
            routing: routing_table(&var)?,
            policy: policy_file(&var)?,
            admin_requeue: requeue_guards(&var)?,
            webhooks: webhook_config(&var)?,
            openai_compat: parse_or(&var, "SPLAI_OPENAI_COMPAT", false)?,
            openai_timeout: {
                let t = secs(
                    "SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS",
                    crate::openai::DEFAULT_TIMEOUT.as_secs(),
                )?;
                if t.is_zero() {
                    bail!("SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS must be at least 1");
                }
                t
            },
        })
    }
}

/// `SPLAI_MODEL_ROUTING_FILE`: a bad file stops start-up naming the variable, the file, the
/// line and the problem.
fn routing_table(
    var: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<Arc<RoutingTable>>> {
    let Some(path) = var("SPLAI_MODEL_ROUTING_FILE") else {
        return Ok(None);
    };
    let table = RoutingTable::load(std::path::Path::new(path.trim()))
        .with_context(|| format!("invalid SPLAI_MODEL_ROUTING_FILE=`{path}`"))?;
    Ok(Some(Arc::new(table)))
}

/// `SPLAI_POLICY_FILE`: a bad file stops start-up naming the variable, the file, the line and
/// the problem.
fn policy_file(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Arc<Policy>>> {
    let Some(path) = var("SPLAI_POLICY_FILE") else {
        return Ok(None);
    };
    let policy = Policy::load(std::path::Path::new(path.trim()))
        .with_context(|| format!("invalid SPLAI_POLICY_FILE=`{path}`"))?;
    Ok(Some(Arc::new(policy)))
}

/// `SPLAI_REDIS_*`, read whatever the queue so that a bad value fails at start-up.
fn redis_config(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<RedisConfig> {
    let d = RedisConfig::default();
    Ok(RedisConfig {
        addr: var("SPLAI_REDIS_ADDR").unwrap_or(d.addr),
        password: var("SPLAI_REDIS_PASSWORD"),
        db: parse_or(var, "SPLAI_REDIS_DB", d.db)?,
        key: var("SPLAI_REDIS_KEY").unwrap_or(d.key),
        deadletter_max: parse_or(var, "SPLAI_REDIS_DEADLETTER_MAX", d.deadletter_max)?,
    })
}

/// The requeue guards; a zero batch size is refused (it would refuse every requeue).
fn requeue_guards(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<RequeueGuards> {
    let d = RequeueGuards::default();
    let guards = RequeueGuards {
        max_batch: parse_or(var, "SPLAI_ADMIN_REQUEUE_MAX_BATCH", d.max_batch)?,
        rate_limit_per_min: parse_or(
            var,
            "SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN",
            d.rate_limit_per_min,
        )?,
        confirm_threshold: parse_or(
            var,
            "SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD",
            d.confirm_threshold,
        )?,
        confirm_token: var("SPLAI_ADMIN_REQUEUE_CONFIRM_TOKEN").map(Secret::new),
    };
    if guards.max_batch == 0 {
        bail!("SPLAI_ADMIN_REQUEUE_MAX_BATCH must be at least 1");
    }
    Ok(guards)
}

/// `SPLAI_WEBHOOK_*`; zero attempts or a bad allowlist or secrets list fail start-up.
fn webhook_config(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<WebhookConfig> {
    let d = WebhookConfig::default();
    let millis = |k: &str, d: Duration| -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(parse_or(
            var,
            k,
            d.as_millis() as u64,
        )?))
    };
    let tenant_secrets = match var("SPLAI_WEBHOOK_TENANT_SECRETS") {
        Some(raw) => WebhookConfig::parse_tenant_secrets(&raw)
            .map_err(|e| anyhow::anyhow!("invalid SPLAI_WEBHOOK_TENANT_SECRETS: {e}"))?,
        None => d.tenant_secrets,
    };
    let destinations = Destinations::parse_allowlist(
        parse_or(var, "SPLAI_WEBHOOK_ALLOW_PRIVATE", false)?,
        var("SPLAI_WEBHOOK_ALLOWED_DESTINATIONS").as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("invalid SPLAI_WEBHOOK_ALLOWED_DESTINATIONS: {e}"))?;
    let config = WebhookConfig {
        secret: var("SPLAI_WEBHOOK_SECRET").map(Secret::new),
        tenant_secrets,
        max_attempts: parse_or(var, "SPLAI_WEBHOOK_MAX_ATTEMPTS", d.max_attempts)?,
        retry_base: millis("SPLAI_WEBHOOK_RETRY_BASE_MS", d.retry_base)?,
        retry_max: millis("SPLAI_WEBHOOK_RETRY_MAX_MS", d.retry_max)?,
        timeout: millis("SPLAI_WEBHOOK_TIMEOUT_MS", d.timeout)?,
        destinations: Arc::new(destinations),
    };
    if config.max_attempts == 0 || config.timeout.is_zero() {
        bail!("SPLAI_WEBHOOK_MAX_ATTEMPTS and SPLAI_WEBHOOK_TIMEOUT_MS must be at least 1");
    }
    Ok(config)
}

/// `SPLAI_SQS_QUEUE_PREFIX`, `SPLAI_DYNAMODB_TABLE`, `SPLAI_S3_*` (or `SPLAI_MINIO_BUCKET`) and
/// `SPLAI_AWS_CREATE_RESOURCES`, read whatever the backends so that a bad value fails at start-up.
fn aws_settings(var: &impl Fn(&str) -> Option<String>) -> anyhow::Result<AwsSettings> {
    let d = AwsSettings::default();
    Ok(AwsSettings {
        sqs_queue_prefix: var("SPLAI_SQS_QUEUE_PREFIX").unwrap_or(d.sqs_queue_prefix),
        dynamodb_table: var("SPLAI_DYNAMODB_TABLE").unwrap_or(d.dynamodb_table),
        s3_bucket: var("SPLAI_S3_BUCKET")
            .or_else(|| var("SPLAI_MINIO_BUCKET"))
            .unwrap_or(d.s3_bucket),
        s3_prefix: var("SPLAI_S3_PREFIX").unwrap_or(d.s3_prefix),
        create_resources: parse_or(var, "SPLAI_AWS_CREATE_RESOURCES", d.create_resources)?,
    })
}

fn parse_or<T: FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("invalid {key}=`{v}`")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// `SPLAI_JOB_TTL` is off unless set to a positive duration; a bad value fails start-up
    /// naming the variable.
    #[test]
    fn job_ttl_is_off_by_default_and_a_bad_one_fails_start_up() {
        assert_eq!(config(&[]).unwrap().job_ttl, None);
        assert_eq!(config(&[("SPLAI_JOB_TTL", "0")]).unwrap().job_ttl, None);
        assert_eq!(
            config(&[("SPLAI_JOB_TTL", "30d")]).unwrap().job_ttl,
            Some(Duration::from_secs(30 * 86_400))
        );
        let e = config(&[("SPLAI_JOB_TTL", "30 days")]).unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_JOB_TTL"), "{e:#}");
    }

    /// A routing file is loaded at start-up; a bad one fails naming the variable, the file
    /// and the line.
    #[test]
    fn routing_file_is_loaded_and_a_bad_one_fails_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("routing.yaml");
        std::fs::write(&good, "default_backend: ollama\ndefault_model: m\n").unwrap();
        let c = config(&[("SPLAI_MODEL_ROUTING_FILE", good.to_str().unwrap())]).unwrap();
        assert_eq!(
            c.routing
                .as_deref()
                .and_then(|r| r.default_backend.as_deref()),
            Some("ollama")
        );
        assert!(config(&[]).unwrap().routing.is_none());

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "default_backend: ollama\nrules: 7\n").unwrap();
        let e = config(&[("SPLAI_MODEL_ROUTING_FILE", bad.to_str().unwrap())]).unwrap_err();
        let shown = format!("{e:#}");
        assert!(shown.contains("SPLAI_MODEL_ROUTING_FILE"), "{shown}");
        assert!(
            shown.contains(&format!("{}: line 2", bad.display())),
            "{shown}"
        );

        let missing = dir.path().join("missing.yaml");
        let e = config(&[("SPLAI_MODEL_ROUTING_FILE", missing.to_str().unwrap())]).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read"), "{e:#}");
    }

    /// A policy file is loaded at start-up; a bad one fails naming the variable, the file,
    /// the line and the problem.
    #[test]
    fn policy_file_is_loaded_and_a_bad_one_fails_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("policy.yaml");
        std::fs::write(&good, "default_action: deny\n").unwrap();
        let c = config(&[("SPLAI_POLICY_FILE", good.to_str().unwrap())]).unwrap();
        assert!(
            !c.policy
                .unwrap()
                .evaluate_submit(&Default::default())
                .allowed
        );
        assert!(config(&[]).unwrap().policy.is_none());
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "default_action: allow\nrules:\n  - effect: perhaps\n").unwrap();
        let e = config(&[("SPLAI_POLICY_FILE", bad.to_str().unwrap())]).unwrap_err();
        let shown = format!("{e:#}");
        assert!(shown.contains("SPLAI_POLICY_FILE"), "{shown}");
        assert!(shown.contains("bad.yaml"), "{shown}");
        assert!(shown.contains("line 3"), "{shown}");
    }

    #[test]
    fn defaults_need_no_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.engine.lease, Duration::from_secs(15));
        assert_eq!(c.backends.sqlite_path, PathBuf::from(".splai/splai.db"));
    }

    #[test]
    fn unknown_backends_fail_listing_supported_values() {
        let e = config(&[("SPLAI_STORE", "mongo")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("supported values: sqlite, postgres, memory"),
            "{e:#}"
        );
        let e = config(&[("SPLAI_ARTIFACT_BACKEND", "gcs")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("`gcs` is not one of local, s3, minio"),
            "{e:#}"
        );
        let e = config(&[("SPLAI_QUEUE", "kafka")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("supported values: store, redis, sqs, memory"),
            "{e:#}"
        );
    }

    #[test]
    fn redis_variables_configure_the_redis_queue() {
        let c = config(&[
            ("SPLAI_QUEUE", "redis"),
            ("SPLAI_REDIS_ADDR", "redis.internal:6380"),
            ("SPLAI_REDIS_PASSWORD", "s3cret"),
            ("SPLAI_REDIS_DB", "2"),
            ("SPLAI_REDIS_KEY", "{splai}:tasks"),
            ("SPLAI_REDIS_DEADLETTER_MAX", "7"),
        ])
        .unwrap();
        let r = &c.backends.redis;
        assert_eq!(
            (r.addr.as_str(), r.password.as_deref(), r.db),
            ("redis.internal:6380", Some("s3cret"), 2)
        );
        assert_eq!((r.key.as_str(), r.deadletter_max), ("{splai}:tasks", 7));
        assert_eq!(config(&[]).unwrap().backends.redis, RedisConfig::default());
        let e = config(&[("SPLAI_REDIS_DB", "first")]).unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_REDIS_DB"), "{e:#}");
    }

    #[test]
    fn postgres_needs_its_dsn() {
        let e = config(&[("SPLAI_STORE", "postgres")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_POSTGRES_DSN must be set"),
            "{e:#}"
        );
        let c = config(&[
            ("SPLAI_STORE", "postgres"),
            (
                "SPLAI_POSTGRES_DSN",
                "postgres://splai:secret@db:5432/splai",
            ),
        ])
        .unwrap();
        assert_eq!(c.backends.postgres_max_connections, 10);
        // Field names may say "secret"; the DSN's password may not show.
        assert!(
            !format!("{c:?}").contains("secret@db"),
            "the DSN is not logged"
        );
        let e = config(&[
            ("SPLAI_STORE", "postgres"),
            ("SPLAI_POSTGRES_DSN", "postgres://db/splai"),
            ("SPLAI_POSTGRES_MAX_CONNECTIONS", "many"),
        ])
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_POSTGRES_MAX_CONNECTIONS"),
            "{e:#}"
        );
        let e = config(&[
            ("SPLAI_STORE", "postgres"),
            ("SPLAI_POSTGRES_DSN", "postgres://db/splai"),
            ("SPLAI_QUEUE", "memory"),
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_QUEUE=store"), "{e:#}");
    }

    #[test]
    fn api_tokens_turn_auth_on_and_stay_out_of_debug() {
        assert!(config(&[]).unwrap().auth.is_none());
        let c = config(&[
            ("SPLAI_API_TOKENS", "very-secret-token:job:read|tenant:acme"),
            ("SPLAI_API_TOKEN_ROLES", "very-secret-token=tenant-runner"),
        ])
        .unwrap();
        assert!(c.auth.is_some());
        assert!(!format!("{c:?}").contains("very-secret"), "{c:?}");
        let e = config(&[
            ("SPLAI_API_TOKENS", "t:job:read"),
            ("SPLAI_API_ROLES", "x=nope"),
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_API_ROLES"), "{e:#}");
    }

    #[test]
    fn aws_names_have_the_original_defaults_and_can_be_set() {
        assert_eq!(config(&[]).unwrap().backends.aws, AwsSettings::default());
        let d = AwsSettings::default();
        assert_eq!(
            (d.sqs_queue_prefix.as_str(), d.dynamodb_table.as_str()),
            ("splai", "splai")
        );
        assert_eq!(
            (d.s3_bucket.as_str(), d.create_resources),
            ("splai-artifacts", false)
        );
        let c = config(&[
            ("SPLAI_SQS_QUEUE_PREFIX", "prod"),
            ("SPLAI_DYNAMODB_TABLE", "prod-state"),
            ("SPLAI_MINIO_BUCKET", "outputs"),
            ("SPLAI_S3_PREFIX", "runs/"),
            ("SPLAI_AWS_CREATE_RESOURCES", "true"),
        ])
        .unwrap();
        let a = &c.backends.aws;
        assert_eq!(
            (a.sqs_queue_prefix.as_str(), a.dynamodb_table.as_str()),
            ("prod", "prod-state")
        );
        assert_eq!(
            (a.s3_bucket.as_str(), a.s3_prefix.as_str()),
            ("outputs", "runs/")
        );
        assert!(a.create_resources);
        let e = config(&[("SPLAI_AWS_CREATE_RESOURCES", "yes please")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_AWS_CREATE_RESOURCES"),
            "{e:#}"
        );
    }

    #[test]
    fn invalid_numbers_name_the_variable() {
        let e = config(&[("SPLAI_LEASE_SECONDS", "soon")]).unwrap_err();
        assert!(format!("{e:#}").contains("SPLAI_LEASE_SECONDS"), "{e:#}");
        let e = config(&[
            ("SPLAI_LEASE_SECONDS", "3"),
            ("SPLAI_HEARTBEAT_SECONDS", "5"),
        ])
        .unwrap_err();
        assert!(format!("{e:#}").contains("shorter than"), "{e:#}");
    }

    /// The requeue guards default to the documented values, read their variables, keep the
    /// confirm token out of `Debug`, and refuse a zero batch or a non-number.
    #[test]
    fn requeue_guards_are_read_once_with_defaults() {
        assert_eq!(config(&[]).unwrap().admin_requeue, RequeueGuards::default());
        let d = RequeueGuards::default();
        assert_eq!(
            (d.max_batch, d.rate_limit_per_min, d.confirm_threshold),
            (100, 30, 20)
        );
        let c = config(&[
            ("SPLAI_ADMIN_REQUEUE_MAX_BATCH", "7"),
            ("SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN", "0"),
            ("SPLAI_ADMIN_REQUEUE_CONFIRM_THRESHOLD", "3"),
            ("SPLAI_ADMIN_REQUEUE_CONFIRM_TOKEN", "c0nfirm-tok"),
        ])
        .unwrap();
        let g = &c.admin_requeue;
        assert_eq!(
            (g.max_batch, g.rate_limit_per_min, g.confirm_threshold),
            (7, 0, 3)
        );
        assert_eq!(
            g.confirm_token.as_ref().map(Secret::expose),
            Some("c0nfirm-tok")
        );
        assert!(!format!("{c:?}").contains("c0nfirm-tok"));
        for (k, v) in [
            ("SPLAI_ADMIN_REQUEUE_MAX_BATCH", "0"),
            ("SPLAI_ADMIN_REQUEUE_RATE_LIMIT_PER_MIN", "lots"),
        ] {
            let e = config(&[(k, v)]).unwrap_err();
            assert!(format!("{e:#}").contains(k), "{e:#}");
        }
    }

    #[test]
    fn webhook_variables_are_read_once_and_bad_ones_fail_start_up() {
        let c = config(&[]).unwrap();
        assert_eq!(c.webhooks.max_attempts, 8);
        assert!(!c.webhooks.destinations.allow_private);
        assert!(c.webhooks.secret.is_none());
        let c = config(&[
            ("SPLAI_WEBHOOK_SECRET", "g-secret-value"),
            ("SPLAI_WEBHOOK_TENANT_SECRETS", "acme=a-secret-value"),
            ("SPLAI_WEBHOOK_MAX_ATTEMPTS", "3"),
            ("SPLAI_WEBHOOK_RETRY_BASE_MS", "250"),
            ("SPLAI_WEBHOOK_ALLOW_PRIVATE", "true"),
            (
                "SPLAI_WEBHOOK_ALLOWED_DESTINATIONS",
                "10.0.0.0/8,hooks.internal",
            ),
        ])
        .unwrap();
        assert_eq!(c.webhooks.max_attempts, 3);
        assert_eq!(c.webhooks.retry_base, Duration::from_millis(250));
        assert!(c.webhooks.destinations.allow_private);
        assert_eq!(
            c.webhooks.destinations.hosts,
            vec!["hooks.internal".to_owned()]
        );
        assert_eq!(
            c.webhooks
                .secret_for(&splai_shared::domain::TenantId::parse("acme").unwrap()),
            Some("a-secret-value")
        );
        assert!(
            !format!("{c:?}").contains("secret-value"),
            "secrets stay out of Debug"
        );
        for (k, v) in [
            ("SPLAI_WEBHOOK_MAX_ATTEMPTS", "0"),
            ("SPLAI_WEBHOOK_ALLOW_PRIVATE", "yes please"),
            ("SPLAI_WEBHOOK_ALLOWED_DESTINATIONS", "not a host!"),
            ("SPLAI_WEBHOOK_TENANT_SECRETS", "acme"),
        ] {
            let e = config(&[(k, v)]).unwrap_err();
            assert!(format!("{e:#}").contains(k), "{e:#}");
        }
    }

    /// S3 artifacts read their settings here; presigned uploads need a store that presigns,
    /// and bad S3 values fail start-up naming the variable.
    #[test]
    fn s3_artifact_settings_and_presigned_uploads() {
        let c = config(&[
            ("SPLAI_ARTIFACT_BACKEND", "minio"),
            ("SPLAI_MINIO_ENDPOINT", "minio:9000"),
            ("SPLAI_MINIO_BUCKET", "outs"),
            ("SPLAI_ARTIFACT_UPLOAD", "presigned"),
        ])
        .unwrap();
        assert_eq!(c.artifact_backend, ArtifactBackend::Minio);
        assert_eq!(c.artifact_upload, ArtifactUpload::Presigned);
        assert_eq!(c.artifact_s3.endpoint.as_deref(), Some("http://minio:9000"));
        assert!(c.artifact_s3.force_path_style);
        assert_eq!(c.artifact_s3.bucket, c.backends.aws.s3_bucket);
        assert_eq!(config(&[]).unwrap().artifact_upload, ArtifactUpload::Direct);
        let e = config(&[("SPLAI_ARTIFACT_UPLOAD", "presigned")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_ARTIFACT_BACKEND=s3"),
            "{e:#}"
        );
        let e = config(&[("SPLAI_S3_FORCE_PATH_STYLE", "perhaps")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("SPLAI_S3_FORCE_PATH_STYLE"),
            "{e:#}"
        );
    }
}
