//! Any OpenAI-compatible server (vLLM, llama.cpp server, TGI, a remote API):
//! `/v1/chat/completions`, `/v1/embeddings` and `/v1/models`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, JsonCall};
use super::{Completion, CompletionRequest, EmbeddingRequest, Embeddings, ModelBackend};
use super::{ModelError, Usage};
use crate::config::Endpoint;

/// `/v1/models` is only asked at start-up for the advertised inventory.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// An OpenAI-compatible server, under the backend name it was configured as.
pub struct OpenAiBackend {
    name: String,
    http: reqwest::Client,
    endpoint: Endpoint,
    default_model: String,
    retries: u32,
}

impl OpenAiBackend {
    /// A backend named `name` calling `endpoint`, with `default_model` for requests that name
    /// none (else `gpt-4o-mini` for the hosted APIs `openai`/`remote_api`, and the original
    /// system's `llama3-8b-q4` for self-hosted servers), retrying `retries` times.
    pub fn new(
        name: &str,
        http: reqwest::Client,
        endpoint: Endpoint,
        default_model: Option<String>,
        retries: u32,
    ) -> Self {
        let fallback = match name {
            "openai" | "remote_api" => "gpt-4o-mini",
            _ => "llama3-8b-q4",
        };
        Self {
            name: name.to_owned(),
            http,
            endpoint,
            default_model: default_model.unwrap_or_else(|| fallback.to_owned()),
            retries,
        }
    }

    fn call(&self, path: &str) -> JsonCall<'_> {
        JsonCall {
            backend: &self.name,
            url: format!("{}{path}", self.endpoint.base_url),
            api_key: self.endpoint.api_key.as_ref(),
            retries: self.retries,
        }
    }

    fn bad_response(&self, message: String) -> ModelError {
        ModelError::BadResponse {
            backend: self.name.clone(),
            message,
        }
    }
}

#[derive(Deserialize)]
struct ChatAnswer {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

/// One `chat.completion.chunk` of a streamed answer.
#[derive(Deserialize)]
struct StreamChunk {
    model: Option<String>,
    #[serde(default)]
    choices: Vec<StreamChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    delta: Delta,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    message: AnswerMessage,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    /// `null` when the model only called tools; there is no text then.
    content: Option<String>,
}

/// Servers differ in which counts they fill in; missing ones are zero.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        let total = if u.total_tokens == 0 {
            u.prompt_tokens + u.completion_tokens
        } else {
            u.total_tokens
        };
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: total,
        }
    }
}

#[derive(Deserialize)]
struct EmbeddingsAnswer {
    model: Option<String>,
    data: Vec<EmbeddingItem>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelItem>,
}

#[derive(Deserialize)]
struct ModelItem {
    id: String,
}

#[async_trait]
impl ModelBackend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    #[tracing::instrument(level = "info", skip_all, name = "model.complete", fields(backend = "openai", model = req.model.as_deref().unwrap_or("")))]
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError> {
        let model = req
            .model
            .clone()
            .unwrap_or_else(|| self.default_model.clone());
        let call = self.call("/v1/chat/completions");
        let answer: ChatAnswer =
            http::post_json(&self.http, &call, &chat_body(&model, req)).await?;
        let choice = answer
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| self.bad_response("no choices in the completion".to_owned()))?;
        Ok(Completion {
            text: choice.message.content.unwrap_or_default(),
            model: answer.model.unwrap_or(model),
            usage: answer.usage.map(Usage::from),
            finish_reason: choice.finish_reason,
        })
    }

    /// `stream: true` with `stream_options.include_usage`: SSE `data:` lines, each a
    /// `chat.completion.chunk` with a delta, the usage in the last, then `data: [DONE]`.
    #[tracing::instrument(level = "info", skip_all, name = "model.complete", fields(backend = "openai", model = req.model.as_deref().unwrap_or(""), stream = true))]
    async fn complete_streaming(
        &self,
        req: &CompletionRequest,
        on_token: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<Completion, ModelError> {
        let model = req
            .model
            .clone()
            .unwrap_or_else(|| self.default_model.clone());
        let mut body = chat_body(&model, req);
        body["stream"] = Value::Bool(true);
        body["stream_options"] = json!({ "include_usage": true });
        let mut text = String::new();
        let (mut answered, mut usage, mut finish_reason) = (None, None, None);
        let mut on_line = |line: &str| -> Result<(), ModelError> {
            // Comments (`: ping`), `event:` and `id:` lines carry no text.
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                return Ok(());
            };
            if data == "[DONE]" {
                return Ok(());
            }
            let chunk: StreamChunk = serde_json::from_str(data)
                .map_err(|e| self.bad_response(format!("unreadable stream chunk: {e}")))?;
            answered = chunk.model.or(answered.take());
            if let Some(u) = chunk.usage {
                usage = Some(Usage::from(u));
            }
            if let Some(choice) = chunk.choices.into_iter().next() {
                if let Some(token) = choice.delta.content.filter(|t| !t.is_empty()) {
                    on_token(&token);
                    text.push_str(&token);
                }
                finish_reason = choice.finish_reason.or(finish_reason.take());
            }
            Ok(())
        };
        let call = self.call("/v1/chat/completions");
        http::post_lines(&self.http, &call, &body, &mut on_line).await?;
        Ok(Completion {
            text,
            model: answered.unwrap_or(model),
            usage,
            finish_reason,
        })
    }

    #[tracing::instrument(level = "info", skip_all, name = "model.embed", fields(backend = "openai", model = req.model.as_deref().unwrap_or("")))]
    async fn embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, ModelError> {
        let model = req
            .model
            .clone()
            .unwrap_or_else(|| self.default_model.clone());
        if req.inputs.is_empty() {
            return Ok(Embeddings {
                model,
                vectors: Vec::new(),
                usage: None,
            });
        }
        let body = json!({ "model": model, "input": req.inputs });
        let mut call = self.call("/v1/embeddings");
        call.retries = req.retries.unwrap_or(call.retries);
        let mut answer: EmbeddingsAnswer = http::post_json(&self.http, &call, &body).await?;
        // The API promises nothing about order beyond `index`.
        answer.data.sort_by_key(|d| d.index);
        let in_order = answer.data.iter().enumerate().all(|(i, d)| d.index == i);
        if answer.data.len() != req.inputs.len() || !in_order {
            return Err(self.bad_response(format!(
                "{} vectors (indices not 0..n) for {} inputs",
                answer.data.len(),
                req.inputs.len()
            )));
        }
        Ok(Embeddings {
            model: answer.model.unwrap_or(model),
            vectors: answer.data.into_iter().map(|d| d.embedding).collect(),
            usage: answer.usage.map(Usage::from),
        })
    }

    async fn list_models(&self) -> Vec<String> {
        let url = format!("{}/v1/models", self.endpoint.base_url);
        let key = self.endpoint.api_key.as_ref();
        http::get_json::<ModelList>(&self.http, &url, key, LIST_TIMEOUT)
            .await
            .map(|l| l.data.into_iter().map(|m| m.id).collect())
            .unwrap_or_default()
    }
}

/// The chat request; unset sampling options are left to the server.
fn chat_body(model: &str, req: &CompletionRequest) -> Value {
    let mut body = json!({
        "model": model,
        "messages": req.messages,
        "stream": false,
    });
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = n.into();
    }
    if let Some(t) = req.temperature {
        body["temperature"] = t.into();
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn backend(name: &str) -> OpenAiBackend {
        let endpoint = Endpoint {
            base_url: "http://127.0.0.1:9".to_owned(),
            api_key: Some(Secret::new("k")),
        };
        OpenAiBackend::new(name, reqwest::Client::new(), endpoint, None, 0)
    }

    /// Hosted APIs default to `gpt-4o-mini`, self-hosted servers to the original's model.
    #[test]
    fn default_model_depends_on_the_backend_kind() {
        assert_eq!(backend("remote_api").default_model, "gpt-4o-mini");
        assert_eq!(backend("openai").default_model, "gpt-4o-mini");
        assert_eq!(backend("vllm").default_model, "llama3-8b-q4");
        assert_eq!(backend("vllm").name(), "vllm");
    }

    /// Unset sampling options stay out of the request body.
    #[test]
    fn chat_body_omits_unset_options() {
        let req = CompletionRequest::default();
        let body = chat_body("m", &req);
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
        let req = CompletionRequest {
            max_tokens: Some(8),
            temperature: Some(0.0),
            ..Default::default()
        };
        let body = chat_body("m", &req);
        assert_eq!(
            (body["max_tokens"].clone(), body["temperature"].clone()),
            (json!(8), json!(0.0))
        );
    }
}
