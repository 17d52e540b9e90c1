//! Ollama's own API: `/api/chat`, `/api/generate`, `/api/embed` (with the older
//! `/api/embeddings` as a fallback) and `/api/tags`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, JsonCall};
use super::{ChatMessage, Completion, CompletionRequest, EmbeddingRequest, Embeddings};
use super::{ModelBackend, ModelError, Usage};
use crate::config::Endpoint;

/// The original system's default model, used when neither the task nor the worker names one.
const DEFAULT_MODEL: &str = "llama3-8b-q4";

/// `/api/tags` is only asked at start-up for the advertised inventory; a slow server must not
/// hold up registration.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// An Ollama server.
pub struct OllamaBackend {
    http: reqwest::Client,
    endpoint: Endpoint,
    default_model: String,
    retries: u32,
}

impl OllamaBackend {
    /// A backend calling `endpoint`, with `default_model` (else `llama3-8b-q4`) for requests
    /// that name none, retrying retryable failures `retries` times.
    pub fn new(
        http: reqwest::Client,
        endpoint: Endpoint,
        default_model: Option<String>,
        retries: u32,
    ) -> Self {
        Self {
            http,
            endpoint,
            default_model: default_model.unwrap_or_else(|| DEFAULT_MODEL.to_owned()),
            retries,
        }
    }

    fn call(&self, path: &str) -> JsonCall<'_> {
        JsonCall {
            backend: "ollama",
            url: format!("{}{path}", self.endpoint.base_url),
            api_key: self.endpoint.api_key.as_ref(),
            retries: self.retries,
        }
    }

    fn model(&self, requested: Option<&String>) -> String {
        requested.unwrap_or(&self.default_model).clone()
    }

    /// The older one-text-per-call API, for servers that predate `/api/embed`.
    async fn embed_one_by_one(
        &self,
        model: &str,
        inputs: &[String],
        retries: Option<u32>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut call = self.call("/api/embeddings");
        call.retries = retries.unwrap_or(call.retries);
        let mut vectors = Vec::with_capacity(inputs.len());
        for text in inputs {
            let body = json!({ "model": model, "prompt": text });
            let answer: LegacyEmbedAnswer = http::post_json(&self.http, &call, &body).await?;
            vectors.push(answer.embedding);
        }
        Ok(vectors)
    }
}

/// The answer of `/api/chat` and `/api/generate` (`stream: false`).
#[derive(Deserialize)]
struct GenerateAnswer {
    model: Option<String>,
    /// `/api/chat`.
    message: Option<ChatMessage>,
    /// `/api/generate`.
    response: Option<String>,
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
}

/// One line of a streamed answer: a [`GenerateAnswer`] with `done`, or an error.
#[derive(Deserialize)]
struct StreamPiece {
    #[serde(flatten)]
    answer: GenerateAnswer,
    #[serde(default)]
    done: bool,
    error: Option<String>,
}

#[derive(Deserialize)]
struct EmbedAnswer {
    model: Option<String>,
    embeddings: Vec<Vec<f32>>,
    prompt_eval_count: Option<u64>,
}

#[derive(Deserialize)]
struct LegacyEmbedAnswer {
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Tags {
    models: Vec<Tag>,
}

#[derive(Deserialize)]
struct Tag {
    name: String,
}

#[async_trait]
impl ModelBackend for OllamaBackend {
    fn name(&self) -> &str {
        "ollama"
    }

    #[tracing::instrument(level = "info", skip_all, name = "model.complete", fields(backend = "ollama", model = req.model.as_deref().unwrap_or("")))]
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError> {
        let model = self.model(req.model.as_ref());
        let (path, body) = request(&model, req, false);
        let answer: GenerateAnswer = http::post_json(&self.http, &self.call(path), &body).await?;
        let text = answer
            .message
            .map(|m| m.content)
            .or(answer.response)
            .ok_or_else(|| ModelError::BadResponse {
                backend: "ollama".to_owned(),
                message: format!("{path} answered without `message` or `response`"),
            })?;
        Ok(Completion {
            text,
            model: answer.model.unwrap_or(model),
            usage: usage(answer.prompt_eval_count, answer.eval_count),
            finish_reason: answer.done_reason,
        })
    }

    /// `stream: true`: one JSON object per line, each with a piece of the text, the last
    /// (`done: true`) with the reason and the counts.
    #[tracing::instrument(level = "info", skip_all, name = "model.complete", fields(backend = "ollama", model = req.model.as_deref().unwrap_or(""), stream = true))]
    async fn complete_streaming(
        &self,
        req: &CompletionRequest,
        on_token: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<Completion, ModelError> {
        let model = self.model(req.model.as_ref());
        let (path, body) = request(&model, req, true);
        let mut text = String::new();
        let mut last: Option<GenerateAnswer> = None;
        let mut on_line = |line: &str| -> Result<(), ModelError> {
            let piece: StreamPiece =
                serde_json::from_str(line).map_err(|e| ModelError::BadResponse {
                    backend: "ollama".to_owned(),
                    message: format!("{path} streamed an unreadable line: {e}"),
                })?;
            if let Some(error) = piece.error {
                return Err(ModelError::Server {
                    backend: "ollama".to_owned(),
                    status: 500,
                    message: error,
                });
            }
            let token = piece.answer.message.as_ref().map(|m| m.content.clone());
            let token = token.or_else(|| piece.answer.response.clone());
            if let Some(token) = token.filter(|t| !t.is_empty()) {
                on_token(&token);
                text.push_str(&token);
            }
            if piece.done {
                last = Some(piece.answer);
            }
            Ok(())
        };
        http::post_lines(&self.http, &self.call(path), &body, &mut on_line).await?;
        let done = last.ok_or_else(|| ModelError::BadResponse {
            backend: "ollama".to_owned(),
            message: format!("{path} ended its stream without `done`"),
        })?;
        Ok(Completion {
            text,
            model: done.model.unwrap_or(model),
            usage: usage(done.prompt_eval_count, done.eval_count),
            finish_reason: done.done_reason,
        })
    }

    #[tracing::instrument(level = "info", skip_all, name = "model.embed", fields(backend = "ollama", model = req.model.as_deref().unwrap_or("")))]
    async fn embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, ModelError> {
        let model = self.model(req.model.as_ref());
        if req.inputs.is_empty() {
            return Ok(Embeddings {
                model,
                vectors: Vec::new(),
                usage: None,
            });
        }
        let body = json!({ "model": model, "input": req.inputs });
        let mut call = self.call("/api/embed");
        call.retries = req.retries.unwrap_or(call.retries);
        let answer = http::post_json::<EmbedAnswer>(&self.http, &call, &body).await;
        let (vectors, answered_model, usage) = match answer {
            Ok(a) => (a.embeddings, a.model, usage(a.prompt_eval_count, None)),
            Err(ModelError::Rejected { status: 404, .. }) => (
                self.embed_one_by_one(&model, &req.inputs, req.retries)
                    .await?,
                None,
                None,
            ),
            Err(e) => return Err(e),
        };
        if vectors.len() != req.inputs.len() {
            return Err(ModelError::BadResponse {
                backend: "ollama".to_owned(),
                message: format!("{} vectors for {} inputs", vectors.len(), req.inputs.len()),
            });
        }
        Ok(Embeddings {
            model: answered_model.unwrap_or(model),
            vectors,
            usage,
        })
    }

    async fn list_models(&self) -> Vec<String> {
        let url = format!("{}/api/tags", self.endpoint.base_url);
        let key = self.endpoint.api_key.as_ref();
        http::get_json::<Tags>(&self.http, &url, key, LIST_TIMEOUT)
            .await
            .map(|t| t.models.into_iter().map(|m| m.name).collect())
            .unwrap_or_default()
    }
}

/// The path and body of a completion: `/api/generate` for a plain prompt, else `/api/chat`.
fn request(model: &str, req: &CompletionRequest, stream: bool) -> (&'static str, Value) {
    if req.plain_prompt {
        let mut body = generate_body(model, req);
        body["stream"] = Value::Bool(stream);
        return ("/api/generate", body);
    }
    let body = json!({
        "model": model,
        "messages": req.messages,
        "stream": stream,
        "options": options(req),
    });
    ("/api/chat", body)
}

/// `/api/generate` takes one prompt and a separate system prompt.
fn generate_body(model: &str, req: &CompletionRequest) -> Value {
    let join = |system: bool| {
        req.messages
            .iter()
            .filter(|m| (m.role == "system") == system)
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    };
    let mut body = json!({
        "model": model,
        "prompt": join(false),
        "stream": false,
        "options": options(req),
    });
    let system = join(true);
    if !system.is_empty() {
        body["system"] = Value::String(system);
    }
    body
}

/// Ollama's sampling options: `num_predict` is its `max_tokens`.
fn options(req: &CompletionRequest) -> Value {
    let mut options = serde_json::Map::new();
    if let Some(n) = req.max_tokens {
        options.insert("num_predict".to_owned(), n.into());
    }
    if let Some(t) = req.temperature {
        options.insert("temperature".to_owned(), t.into());
    }
    Value::Object(options)
}

fn usage(prompt: Option<u64>, completion: Option<u64>) -> Option<Usage> {
    if prompt.is_none() && completion.is_none() {
        return None;
    }
    let (p, c) = (prompt.unwrap_or(0), completion.unwrap_or(0));
    Some(Usage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p + c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        }
    }

    /// A plain prompt goes to `/api/generate` with the system text apart and options mapped.
    #[test]
    fn generate_body_separates_system_and_maps_options() {
        let req = CompletionRequest {
            messages: vec![message("system", "be brief"), message("user", "hi")],
            plain_prompt: true,
            max_tokens: Some(16),
            temperature: Some(0.5),
            ..Default::default()
        };
        let body = generate_body("m", &req);
        assert_eq!(body["prompt"], "hi");
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["stream"], false);
        assert_eq!(
            body["options"],
            json!({"num_predict": 16, "temperature": 0.5})
        );
    }
}
