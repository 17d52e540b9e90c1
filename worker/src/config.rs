//! The worker's configuration, read once from `SPLAI_*` variables (SPEC §8, with the original
//! defaults) and passed down; nothing below `main` reads the environment.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use splai_shared::artifacts::ArtifactBackend;
use splai_shared::artifacts::s3::S3Config;
use splai_shared::domain::WorkerId;

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How to reach the gateway and how hard to work.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Gateway base URL (`SPLAI_CONTROL_PLANE_URL`, default `http://localhost:8080`).
    pub url: String,
    /// Sent as `X-SPLAI-Token` and `Authorization: Bearer` (`SPLAI_API_TOKEN`).
    pub token: Option<Secret>,
    /// Tasks run at once (`SPLAI_MAX_PARALLEL_TASKS`, default 2).
    pub max_parallel: usize,
    /// Heartbeat interval (`SPLAI_HEARTBEAT_SECONDS`, default 5); the gateway's shorter
    /// interval wins.
    pub heartbeat: Duration,
    /// Least time between two assignment polls when idle (`SPLAI_POLL_MILLIS`, default 1500).
    /// Long-polling makes pickup immediate; this only paces a gateway that answers at once.
    pub poll: Duration,
    /// Long-poll length of one assignment request (`SPLAI_ASSIGNMENT_WAIT_SECONDS`, default
    /// 20; 0 polls without waiting).
    pub assignment_wait: Duration,
    /// How long running tasks may finish after SIGTERM before they are handed back
    /// (`SPLAI_SHUTDOWN_GRACE_SECONDS`, default 30).
    pub shutdown_grace: Duration,
    /// Longest pause between reconnection attempts (`SPLAI_GATEWAY_RETRY_MAX_MS`, default
    /// 10000).
    pub retry_max: Duration,
    /// Outputs up to this size travel inline in the report instead of being written to the
    /// artifact store (`SPLAI_MAX_INLINE_OUTPUT_BYTES`, default 65536; 0 never inlines). The
    /// gateway's own limit, learnt at registration, caps it.
    pub max_inline_output: usize,
}

/// What the worker tells the gateway about itself, beyond what it detects.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// Identifier (`SPLAI_WORKER_ID`, default `worker-local`).
    pub worker_id: Option<WorkerId>,
    /// Backends to advertise (`SPLAI_WORKER_BACKENDS`, CSV); default: every configured one.
    pub backends: Vec<String>,
    /// Extra models to advertise (`SPLAI_WORKER_MODELS`, CSV).
    pub models: Vec<String>,
    /// Tools to advertise (`SPLAI_WORKER_TOOLS`, CSV).
    pub tools: Vec<String>,
    /// Locality (`SPLAI_WORKER_LOCALITY`).
    pub locality: Option<String>,
    /// GPU presence: detected (`None`), or forced by `SPLAI_WORKER_GPU=true|false`.
    pub gpu: Option<bool>,
    /// GPU memory in MB when detection cannot tell (`SPLAI_WORKER_GPU_MEMORY_MB`).
    pub gpu_memory_mb: Option<u64>,
}

/// A model server: its base URL and optional API key.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL, without a trailing `/v1`.
    pub base_url: String,
    /// Bearer key, for remote APIs.
    pub api_key: Option<Secret>,
}

/// The model servers this worker can reach, by backend name.
#[derive(Debug, Clone, Default)]
pub struct ModelServers {
    /// `ollama` (`SPLAI_OLLAMA_BASE_URL`).
    pub ollama: Option<Endpoint>,
    /// `vllm` (`SPLAI_VLLM_BASE_URL`), OpenAI-compatible.
    pub vllm: Option<Endpoint>,
    /// `llama.cpp` server (`SPLAI_LLAMACPP_BASE_URL`), OpenAI-compatible.
    pub llamacpp: Option<Endpoint>,
    /// `tgi` (`SPLAI_TGI_BASE_URL`), OpenAI-compatible.
    pub tgi: Option<Endpoint>,
    /// `remote_api` (`SPLAI_REMOTE_API_BASE_URL`, `SPLAI_REMOTE_API_KEY`).
    pub remote_api: Option<Endpoint>,
    /// `openai`, any OpenAI-compatible server (`SPLAI_OPENAI_BASE_URL`, `SPLAI_OPENAI_API_KEY`).
    pub openai: Option<Endpoint>,
    /// Model used when neither the task nor its job names one (`SPLAI_DEFAULT_MODEL`).
    pub default_model: Option<String>,
    /// Retries of a model call after a connection error, 5xx or 429
    /// (`SPLAI_MODEL_HTTP_RETRIES`, default 2).
    pub http_retries: u32,
}

impl ModelServers {
    /// The configured servers as (backend name, endpoint), in preference order: the first
    /// is the default backend for tasks that name none.
    pub fn configured(&self) -> Vec<(&'static str, &Endpoint)> {
        [
            ("ollama", &self.ollama),
            ("vllm", &self.vllm),
            ("llama.cpp", &self.llamacpp),
            ("tgi", &self.tgi),
            ("openai", &self.openai),
            ("remote_api", &self.remote_api),
        ]
        .into_iter()
        .filter_map(|(name, e)| e.as_ref().map(|e| (name, e)))
        .collect()
    }
}

/// How `tool_execution` isolates the network of the command it runs (`SPLAI_TOOL_NETWORK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolNetwork {
    /// No network when the host allows a private network namespace; otherwise a warning at
    /// start-up and the host network.
    #[default]
    Auto,
    /// Always no network; a host that cannot isolate fails the task.
    None,
    /// The host network.
    Host,
}

impl FromStr for ToolNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => Err(format!("`{other}` is not one of auto, none, host")),
        }
    }
}

/// Settings of the executors.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Embedding backend when the task names none (`SPLAI_EMBEDDING_BACKEND`): a backend name,
    /// or `local` for deterministic hash vectors; default: the worker's default backend.
    pub embedding_backend: Option<String>,
    /// Embedding model when the task names none (`SPLAI_EMBEDDING_MODEL`, `nomic-embed-text`).
    pub embedding_model: String,
    /// Size of `local` vectors (`SPLAI_EMBEDDING_DIMENSION`, 384).
    pub embedding_dimension: usize,
    /// Retries of an embedding call (`SPLAI_EMBEDDING_HTTP_RETRIES`, 2).
    pub embedding_retries: u32,
    /// `local` (scored on the worker) or `remote_api` (`SPLAI_RETRIEVAL_BACKEND`, `local`).
    pub retrieval_backend: String,
    /// Remote retrieval service (`SPLAI_RETRIEVAL_BASE_URL`, `SPLAI_RETRIEVAL_API_KEY`).
    pub retrieval_remote: Option<Endpoint>,
    /// Retries of a remote retrieval call (`SPLAI_RETRIEVAL_HTTP_RETRIES`, 2).
    pub retrieval_retries: u32,
    /// Timeout of a tool command when the task sets none (`SPLAI_TOOL_TIMEOUT_SECONDS`, 30).
    pub tool_timeout: Duration,
    /// Programs a tool task may run, without a shell (`SPLAI_TOOL_ALLOWLIST`, CSV). `None`
    /// allows any `command` through `/bin/sh -c`.
    pub tool_allowlist: Option<Vec<String>>,
    /// Network isolation of tool commands (`SPLAI_TOOL_NETWORK`, `auto`).
    pub tool_network: ToolNetwork,
    /// Where tool commands get their working directories (`<artifact root>/sandboxes`).
    pub sandbox_root: PathBuf,
    /// Model cache (`SPLAI_MODEL_CACHE_DIR`, default `<artifact root>/models`).
    pub model_cache_dir: PathBuf,
    /// Hugging Face endpoint for `model_download` (`SPLAI_HF_ENDPOINT`,
    /// `https://huggingface.co`).
    pub hf_endpoint: String,
    /// Token for private Hugging Face repositories (`HF_TOKEN`).
    pub hf_token: Option<Secret>,
}

/// Everything the worker needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gateway connection.
    pub gateway: GatewayConfig,
    /// What to advertise.
    pub capabilities: Capabilities,
    /// Model servers.
    pub models: ModelServers,
    /// Executor settings.
    pub executors: ExecutorConfig,
    /// Artifact store for outputs too large to travel inline (`SPLAI_ARTIFACT_BACKEND`,
    /// default `local`).
    pub artifact_backend: ArtifactBackend,
    /// Local artifact root (`SPLAI_ARTIFACT_ROOT`, default `/tmp/splai-artifacts`).
    pub artifact_root: PathBuf,
    /// The S3/MinIO settings (`SPLAI_S3_*`, `SPLAI_MINIO_*`) for
    /// `SPLAI_ARTIFACT_BACKEND=s3|minio`. An assignment that carries an upload URL is put
    /// there instead, whatever these say.
    pub artifact_s3: S3Config,
    /// Where to serve `GET /metrics` (Prometheus text), e.g. `0.0.0.0:9102`
    /// (`SPLAI_WORKER_METRICS_ADDR`); unset (the default) serves nothing, so several workers
    /// on one host do not collide on a port.
    pub metrics_addr: Option<std::net::SocketAddr>,
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
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let artifact_root = PathBuf::from(
            var("SPLAI_ARTIFACT_ROOT").unwrap_or_else(|| "/tmp/splai-artifacts".into()),
        );
        let gateway = gateway(&var)?;
        let models = model_servers(&var)?;
        let capabilities = capabilities(&var)?;
        let executors = executors(&var, &artifact_root)?;
        let artifact_backend = parse_or(&var, "SPLAI_ARTIFACT_BACKEND", ArtifactBackend::Local)?;
        Ok(Self {
            gateway,
            capabilities,
            models,
            executors,
            artifact_backend,
            artifact_root,
            artifact_s3: S3Config::from_vars(artifact_backend == ArtifactBackend::Minio, &var)?,
            metrics_addr: var("SPLAI_WORKER_METRICS_ADDR")
                .map(|v| {
                    v.parse().with_context(|| {
                        format!(
                            "invalid SPLAI_WORKER_METRICS_ADDR=`{v}`: expected host:port, \
                             e.g. 0.0.0.0:9102"
                        )
                    })
                })
                .transpose()?,
        })
    }
}

type Var<'a> = dyn Fn(&str) -> Option<String> + 'a;

fn gateway(var: &Var<'_>) -> anyhow::Result<GatewayConfig> {
    let url = var("SPLAI_CONTROL_PLANE_URL").unwrap_or_else(|| "http://localhost:8080".into());
    let parsed = reqwest::Url::parse(&url)
        .with_context(|| format!("invalid SPLAI_CONTROL_PLANE_URL=`{url}`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("SPLAI_CONTROL_PLANE_URL must be an http(s) URL, got `{url}`");
    }
    let max_parallel: usize = parse_or(var, "SPLAI_MAX_PARALLEL_TASKS", 2)?;
    if max_parallel == 0 {
        bail!("SPLAI_MAX_PARALLEL_TASKS must be at least 1");
    }
    let heartbeat = Duration::from_secs(parse_or(var, "SPLAI_HEARTBEAT_SECONDS", 5)?);
    if heartbeat.is_zero() {
        bail!("SPLAI_HEARTBEAT_SECONDS must be at least 1");
    }
    Ok(GatewayConfig {
        url: url.trim_end_matches('/').to_owned(),
        token: var("SPLAI_API_TOKEN").map(Secret::new),
        max_parallel,
        heartbeat,
        poll: Duration::from_millis(parse_or(var, "SPLAI_POLL_MILLIS", 1500)?),
        assignment_wait: Duration::from_secs(parse_or(var, "SPLAI_ASSIGNMENT_WAIT_SECONDS", 20)?),
        shutdown_grace: Duration::from_secs(parse_or(var, "SPLAI_SHUTDOWN_GRACE_SECONDS", 30)?),
        retry_max: Duration::from_millis(parse_or(var, "SPLAI_GATEWAY_RETRY_MAX_MS", 10_000)?),
        max_inline_output: parse_or(var, "SPLAI_MAX_INLINE_OUTPUT_BYTES", 65_536)?,
    })
}

fn capabilities(var: &Var<'_>) -> anyhow::Result<Capabilities> {
    let id = var("SPLAI_WORKER_ID").unwrap_or_else(|| "worker-local".into());
    let worker_id =
        WorkerId::parse(id.clone()).with_context(|| format!("invalid SPLAI_WORKER_ID=`{id}`"))?;
    let gpu = var("SPLAI_WORKER_GPU")
        .filter(|v| v != "auto")
        .map(|v| parse_bool("SPLAI_WORKER_GPU", &v))
        .transpose()?;
    Ok(Capabilities {
        worker_id: Some(worker_id),
        backends: csv(var("SPLAI_WORKER_BACKENDS")),
        models: csv(var("SPLAI_WORKER_MODELS")),
        tools: csv(var("SPLAI_WORKER_TOOLS")),
        locality: var("SPLAI_WORKER_LOCALITY"),
        gpu,
        gpu_memory_mb: var("SPLAI_WORKER_GPU_MEMORY_MB")
            .map(|v| parse_value("SPLAI_WORKER_GPU_MEMORY_MB", &v))
            .transpose()?,
    })
}

fn model_servers(var: &Var<'_>) -> anyhow::Result<ModelServers> {
    let endpoint = |url_var: &str, key_var: Option<&str>| -> anyhow::Result<Option<Endpoint>> {
        let Some(url) = var(url_var) else {
            return Ok(None);
        };
        let ok = reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !ok {
            bail!("{url_var} must be an http(s) URL, got `{url}`");
        }
        // Accept both `http://host:8000` and `http://host:8000/v1`: clients add the path.
        let base_url = url.trim_end_matches('/').trim_end_matches("/v1").to_owned();
        Ok(Some(Endpoint {
            base_url,
            api_key: key_var.and_then(var).map(Secret::new),
        }))
    };
    Ok(ModelServers {
        ollama: endpoint("SPLAI_OLLAMA_BASE_URL", None)?,
        vllm: endpoint("SPLAI_VLLM_BASE_URL", Some("SPLAI_VLLM_API_KEY"))?,
        llamacpp: endpoint("SPLAI_LLAMACPP_BASE_URL", None)?,
        tgi: endpoint("SPLAI_TGI_BASE_URL", None)?,
        remote_api: endpoint("SPLAI_REMOTE_API_BASE_URL", Some("SPLAI_REMOTE_API_KEY"))?,
        openai: endpoint("SPLAI_OPENAI_BASE_URL", Some("SPLAI_OPENAI_API_KEY"))?,
        default_model: var("SPLAI_DEFAULT_MODEL"),
        http_retries: parse_or(var, "SPLAI_MODEL_HTTP_RETRIES", 2)?,
    })
}

fn executors(var: &Var<'_>, artifact_root: &std::path::Path) -> anyhow::Result<ExecutorConfig> {
    let retrieval_backend = var("SPLAI_RETRIEVAL_BACKEND").unwrap_or_else(|| "local".into());
    let retrieval_remote = var("SPLAI_RETRIEVAL_BASE_URL").map(|u| Endpoint {
        base_url: u.trim_end_matches('/').to_owned(),
        api_key: var("SPLAI_RETRIEVAL_API_KEY").map(Secret::new),
    });
    match retrieval_backend.as_str() {
        "local" => {}
        "remote_api" | "remote" if retrieval_remote.is_some() => {}
        "remote_api" | "remote" => {
            bail!("SPLAI_RETRIEVAL_BACKEND=remote_api needs SPLAI_RETRIEVAL_BASE_URL")
        }
        other => bail!("invalid SPLAI_RETRIEVAL_BACKEND=`{other}`: expected local or remote_api"),
    }
    Ok(ExecutorConfig {
        embedding_backend: var("SPLAI_EMBEDDING_BACKEND"),
        embedding_model: var("SPLAI_EMBEDDING_MODEL").unwrap_or_else(|| "nomic-embed-text".into()),
        embedding_dimension: parse_or(var, "SPLAI_EMBEDDING_DIMENSION", 384)?,
        embedding_retries: parse_or(var, "SPLAI_EMBEDDING_HTTP_RETRIES", 2)?,
        retrieval_backend,
        retrieval_remote,
        retrieval_retries: parse_or(var, "SPLAI_RETRIEVAL_HTTP_RETRIES", 2)?,
        tool_timeout: Duration::from_secs(parse_or(var, "SPLAI_TOOL_TIMEOUT_SECONDS", 30)?),
        tool_allowlist: var("SPLAI_TOOL_ALLOWLIST").map(|v| csv(Some(v))),
        tool_network: parse_or(var, "SPLAI_TOOL_NETWORK", ToolNetwork::Auto)?,
        sandbox_root: artifact_root.join("sandboxes"),
        model_cache_dir: var("SPLAI_MODEL_CACHE_DIR")
            .map_or_else(|| artifact_root.join("models"), PathBuf::from),
        hf_endpoint: var("SPLAI_HF_ENDPOINT")
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_owned(),
        hf_token: var("HF_TOKEN").map(Secret::new),
    })
}

fn csv(v: Option<String>) -> Vec<String> {
    v.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

fn parse_bool(key: &str, v: &str) -> anyhow::Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => bail!("invalid {key}=`{v}`: expected true or false"),
    }
}

fn parse_value<T: FromStr>(key: &str, v: &str) -> anyhow::Result<T>
where
    T::Err: fmt::Display,
{
    v.parse()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("invalid {key}=`{v}`"))
}

fn parse_or<T: FromStr>(var: &Var<'_>, key: &str, default: T) -> anyhow::Result<T>
where
    T::Err: fmt::Display,
{
    var(key).map_or(Ok(default), |v| parse_value(key, &v))
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

    /// With no variables the worker has the original's defaults.
    #[test]
    fn defaults_are_the_originals() {
        let c = config(&[]).unwrap();
        assert_eq!(c.gateway.url, "http://localhost:8080");
        assert_eq!(c.capabilities.worker_id.unwrap().as_str(), "worker-local");
        assert_eq!(c.gateway.max_parallel, 2);
        assert_eq!(c.gateway.heartbeat, Duration::from_secs(5));
        assert_eq!(c.gateway.poll, Duration::from_millis(1500));
        assert_eq!(c.artifact_root, PathBuf::from("/tmp/splai-artifacts"));
        assert_eq!(
            c.executors.model_cache_dir,
            PathBuf::from("/tmp/splai-artifacts/models")
        );
        assert_eq!(c.executors.embedding_model, "nomic-embed-text");
        assert_eq!(c.executors.embedding_dimension, 384);
        assert_eq!(c.executors.retrieval_backend, "local");
        assert!(c.models.configured().is_empty());
    }

    /// Model server URLs are accepted with or without `/v1`, and keys stay out of Debug.
    #[test]
    fn model_servers_normalise_urls_and_hide_keys() {
        let c = config(&[
            ("SPLAI_OPENAI_BASE_URL", "http://gpu:8000/v1/"),
            ("SPLAI_OPENAI_API_KEY", "sk-secret"),
            ("SPLAI_OLLAMA_BASE_URL", "http://127.0.0.1:11434"),
        ])
        .unwrap();
        let names: Vec<_> = c.models.configured().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["ollama", "openai"]);
        let openai = c.models.openai.as_ref().unwrap();
        assert_eq!(openai.base_url, "http://gpu:8000");
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    /// Bad values fail naming the variable.
    #[test]
    fn invalid_values_name_the_variable() {
        for (k, v) in [
            ("SPLAI_MAX_PARALLEL_TASKS", "many"),
            ("SPLAI_MAX_PARALLEL_TASKS", "0"),
            ("SPLAI_CONTROL_PLANE_URL", "ftp://x"),
            ("SPLAI_OLLAMA_BASE_URL", "localhost"),
            ("SPLAI_WORKER_GPU", "maybe"),
            ("SPLAI_TOOL_NETWORK", "open"),
            ("SPLAI_ARTIFACT_BACKEND", "gcs"),
            ("SPLAI_S3_PART_SIZE_BYTES", "1024"),
            ("SPLAI_MINIO_SECRET_KEY", "no-access-key"),
            ("SPLAI_RETRIEVAL_BACKEND", "remote_api"),
        ] {
            let e = config(&[(k, v)]).unwrap_err();
            assert!(format!("{e:#}").contains(k), "{k}={v}: {e:#}");
        }
    }
}
