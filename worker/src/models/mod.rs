//! The model seam: one trait for every model server the worker can call, one file per API.
//!
//! - `ollama.rs`: Ollama's own API (`/api/chat`, `/api/generate`, `/api/embed`).
//! - `openai.rs`: any OpenAI-compatible server (vLLM, llama.cpp server, TGI, a remote API).
//! - `echo.rs`: the development backend; answers without a model and says so.
//! - `http.rs`: the shared POST with retries and error classification.
//! - `metered.rs`: a wrapper timing every call and counting errors (the worker's metrics).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::ModelServers;

mod echo;
pub(crate) mod http;
mod metered;
mod ollama;
mod openai;

pub use echo::EchoBackend;
pub use metered::Metered;
pub use ollama::OllamaBackend;
pub use openai::OpenAiBackend;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A completion to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionRequest {
    /// The model; `None` uses the backend's default.
    pub model: Option<String>,
    /// The conversation. A plain prompt is one `user` message.
    pub messages: Vec<ChatMessage>,
    /// `true` when the task gave a plain prompt rather than messages; backends with a
    /// separate plain-completion API (Ollama's `/api/generate`) use it then.
    pub plain_prompt: bool,
    /// Largest number of tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
}

/// Token counts, when the backend reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// A finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text.
    pub text: String,
    /// The model that answered.
    pub model: String,
    /// Token counts.
    pub usage: Option<Usage>,
    /// Why generation stopped (`stop`, `length`, ...).
    pub finish_reason: Option<String>,
}

/// Texts to embed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EmbeddingRequest {
    /// The model; `None` uses the backend's default.
    pub model: Option<String>,
    /// One vector is returned per text, in order.
    pub inputs: Vec<String>,
    /// Retries of a retryable failure, when the task's settings differ from the backend's
    /// (`SPLAI_EMBEDDING_HTTP_RETRIES`).
    pub retries: Option<u32>,
    /// Vector size, for backends that choose one (echo).
    pub dimensions: Option<usize>,
}

/// Embedding vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The model that answered.
    pub model: String,
    /// One per input, in order.
    pub vectors: Vec<Vec<f32>>,
    /// Token counts.
    pub usage: Option<Usage>,
}

/// Why a model call failed, classified for the retry policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The server could not be reached, or timed out. Retryable.
    #[error("{backend} at {url} is unreachable: {message}")]
    Unreachable {
        /// Backend name.
        backend: String,
        /// What was called.
        url: String,
        /// The connection error.
        message: String,
    },
    /// The server failed (5xx), or asked to slow down (429/408). Retryable.
    #[error("{backend} failed: {status}: {message}")]
    Server {
        /// Backend name.
        backend: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server refused the request (other 4xx). Retrying cannot help.
    #[error("{backend} rejected the request: {status}: {message}")]
    Rejected {
        /// Backend name.
        backend: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server answered with something this client cannot read. Retryable.
    #[error("{backend} returned an unexpected response: {message}")]
    BadResponse {
        /// Backend name.
        backend: String,
        /// What was wrong with it.
        message: String,
    },
    /// The backend cannot do this (e.g. embeddings on a chat-only server). Permanent.
    #[error("{0}")]
    Unsupported(String),
}

impl ModelError {
    /// Whether another try may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. } | Self::Server { .. } | Self::BadResponse { .. }
        )
    }
}

/// A model server.
#[async_trait]
pub trait ModelBackend: Send + Sync {
    /// The backend's name (`ollama`, `vllm`, `echo`, ...).
    fn name(&self) -> &str;

    /// Runs a completion.
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError>;

    /// Runs a completion, handing each piece of text to `on_token` as the server produces
    /// it; the finished completion is returned as [`ModelBackend::complete`] returns it. The
    /// default (for servers that cannot stream) hands on the whole text at the end.
    async fn complete_streaming(
        &self,
        req: &CompletionRequest,
        on_token: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<Completion, ModelError> {
        let completion = self.complete(req).await?;
        if !completion.text.is_empty() {
            on_token(&completion.text);
        }
        Ok(completion)
    }

    /// Embeds texts.
    async fn embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, ModelError>;

    /// Models the server has available, for the worker's advertised inventory. Best effort:
    /// an empty list when the server cannot say.
    async fn list_models(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The canonical name of a backend, accepting the original's aliases.
pub fn canonical_name(name: &str) -> String {
    match name.trim().to_ascii_lowercase().as_str() {
        "llamacpp" | "llama-cpp" | "llama_cpp" => "llama.cpp".to_owned(),
        "remote" | "remote-api" => "remote_api".to_owned(),
        other => other.to_owned(),
    }
}

/// The backends this worker offers, by name, with a default for tasks that name none.
#[derive(Clone, Default)]
pub struct ModelBackends {
    by_name: BTreeMap<String, Arc<dyn ModelBackend>>,
    /// Names in preference order; the first is the default.
    order: Vec<String>,
}

impl ModelBackends {
    /// No backends.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend under its name (the first added is the default).
    pub fn with(mut self, backend: Arc<dyn ModelBackend>) -> Self {
        let name = canonical_name(backend.name());
        if !self.by_name.contains_key(&name) {
            self.order.push(name.clone());
        }
        self.by_name.insert(name, backend);
        self
    }

    /// The backends `advertise` names (all configured ones when empty), built from the
    /// configured servers, all calling through `http`; `echo` is available only when named.
    ///
    /// # Errors
    /// A named backend with no server configured, naming the variable to set.
    pub fn from_config(
        servers: &ModelServers,
        advertise: &[String],
        http: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let build = |name: &str| -> anyhow::Result<Arc<dyn ModelBackend>> {
            let endpoint = |e: &Option<crate::config::Endpoint>, var: &str| {
                e.clone().ok_or_else(|| {
                    anyhow::anyhow!("backend `{name}` is advertised but {var} is not set")
                })
            };
            let retries = servers.http_retries;
            let default_model = servers.default_model.clone();
            Ok(match name {
                "echo" => Arc::new(EchoBackend),
                "ollama" => Arc::new(OllamaBackend::new(
                    http.clone(),
                    endpoint(&servers.ollama, "SPLAI_OLLAMA_BASE_URL")?,
                    default_model,
                    retries,
                )),
                "vllm" | "llama.cpp" | "tgi" | "openai" | "remote_api" => {
                    let (e, var) = match name {
                        "vllm" => (&servers.vllm, "SPLAI_VLLM_BASE_URL"),
                        "llama.cpp" => (&servers.llamacpp, "SPLAI_LLAMACPP_BASE_URL"),
                        "tgi" => (&servers.tgi, "SPLAI_TGI_BASE_URL"),
                        "openai" => (&servers.openai, "SPLAI_OPENAI_BASE_URL"),
                        _ => (&servers.remote_api, "SPLAI_REMOTE_API_BASE_URL"),
                    };
                    Arc::new(OpenAiBackend::new(
                        name,
                        http.clone(),
                        endpoint(e, var)?,
                        default_model,
                        retries,
                    ))
                }
                other => anyhow::bail!(
                    "unknown backend `{other}` in SPLAI_WORKER_BACKENDS: expected ollama, vllm, \
                     llama.cpp, tgi, openai, remote_api or echo"
                ),
            })
        };
        let names: Vec<String> = if advertise.is_empty() {
            servers
                .configured()
                .iter()
                .map(|(n, _)| (*n).to_owned())
                .collect()
        } else {
            advertise.iter().map(|n| canonical_name(n)).collect()
        };
        let mut out = Self::new();
        for name in names {
            out = out.with(build(&name)?);
        }
        Ok(out)
    }

    /// The same backends, each wrapped to record its calls in `metrics`.
    pub fn metered(self, metrics: &Arc<crate::metrics::WorkerMetrics>) -> Self {
        let by_name = self
            .by_name
            .into_iter()
            .map(|(name, b)| {
                let m: Arc<dyn ModelBackend> = Arc::new(Metered::new(b, metrics.clone()));
                (name, m)
            })
            .collect();
        Self {
            by_name,
            order: self.order,
        }
    }

    /// The backend called `name` (aliases accepted).
    pub fn get(&self, name: &str) -> Option<&Arc<dyn ModelBackend>> {
        self.by_name.get(&canonical_name(name))
    }

    /// The backend for tasks that name none.
    pub fn default_backend(&self) -> Option<&Arc<dyn ModelBackend>> {
        self.order.first().and_then(|n| self.by_name.get(n))
    }

    /// Backend names, in preference order.
    pub fn names(&self) -> &[String] {
        &self.order
    }

    /// Whether no backend is configured.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}
