//! Translation between OpenAI shapes and SPLAI jobs, and nothing else: requests become
//! [`NewJob`]s, finished tasks' outputs become OpenAI answers. Pure functions, no I/O.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use splai_shared::domain::{NewJob, Priority, TaskId, TaskSpec, TaskType, TenantId};

use crate::error::ApiError;

/// The one task of a chat job (the id the `chat` template uses too).
pub const GENERATE: &str = "generate";

/// The one task of an embedding job.
pub const EMBED: &str = "embed";

/// `POST /v1/chat/completions`: the fields SPLAI uses; others are accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatRequest {
    model: String,
    messages: Vec<Value>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    n: Option<u32>,
}

/// `stream_options`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `POST /v1/responses`: the fields SPLAI uses; others are accepted and ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ResponsesRequest {
    model: String,
    input: Value,
    instructions: Option<String>,
    #[serde(default)]
    stream: bool,
    max_output_tokens: Option<u32>,
    temperature: Option<f64>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
}

/// A chat to run, whichever endpoint asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Chat {
    /// The requested model; the job's explicit model, so routing applies.
    pub model: String,
    /// OpenAI-format messages, as the `llm_inference` executor reads them.
    pub messages: Vec<Value>,
    /// Largest number of tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Whether the client wants tokens as they are produced.
    pub stream: bool,
    /// Whether a streamed answer ends with a usage chunk.
    pub include_usage: bool,
}

impl ChatRequest {
    /// The chat it asks for.
    ///
    /// # Errors
    /// 400 for what SPLAI cannot do (`n` above 1) or an invalid conversation.
    pub fn into_chat(self) -> Result<Chat, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("only `n: 1` is supported"));
        }
        check_model(&self.model)?;
        check_messages(&self.messages, "messages")?;
        Ok(Chat {
            model: self.model,
            messages: self.messages,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

impl ResponsesRequest {
    /// The chat it asks for: `input` (a string, or a list of messages), after `instructions`
    /// as a system message.
    ///
    /// # Errors
    /// 400 for an empty or unreadable `input`, or `stream: true` (not supported here).
    pub fn into_chat(self) -> Result<Chat, ApiError> {
        if self.stream {
            return Err(ApiError::invalid(
                "`stream: true` is not supported on /v1/responses; use /v1/chat/completions \
                 with `stream: true`",
            ));
        }
        check_model(&self.model)?;
        let mut messages = match self.input {
            Value::String(text) => vec![json!({ "role": "user", "content": text })],
            Value::Array(items) => items,
            _ => {
                return Err(ApiError::invalid(
                    "field `input` must be a string or a list of messages",
                ));
            }
        };
        check_messages(&messages, "input")?;
        if let Some(system) = self.instructions.filter(|s| !s.trim().is_empty()) {
            messages.insert(0, json!({ "role": "system", "content": system }));
        }
        Ok(Chat {
            model: self.model,
            messages,
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            stream: false,
            include_usage: false,
        })
    }
}

fn check_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid("field `model` must not be empty"));
    }
    Ok(())
}

/// Each message an object with a string `role`; at least one.
fn check_messages(messages: &[Value], field: &str) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(format!(
            "field `{field}` must not be empty"
        )));
    }
    for (i, m) in messages.iter().enumerate() {
        if !m.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(format!(
                "`{field}[{i}]` must be a message with a string `role`"
            )));
        }
    }
    Ok(())
}

/// The job for a chat: one `llm_inference` task, `generate`, over the messages, the model
/// as the job's model and the task's model constraint (routing adds the backend), at
/// interactive priority. `stream` asks the worker to forward tokens while it runs.
pub fn chat_job(chat: &Chat, tenant: TenantId, endpoint: &str) -> NewJob {
    let mut inputs = Map::new();
    inputs.insert("messages".into(), Value::Array(chat.messages.clone()));
    if let Some(n) = chat.max_tokens {
        inputs.insert("max_tokens".into(), n.into());
    }
    if let Some(t) = chat.temperature {
        inputs.insert("temperature".into(), t.into());
    }
    if chat.stream {
        inputs.insert("stream".into(), true.into());
    }
    one_task_job(
        tenant,
        "chat",
        &chat.model,
        task(GENERATE, TaskType::LlmInference, inputs, &chat.model),
        endpoint,
    )
}

/// The job for an embeddings request: one `embedding` task, `embed`, over the texts.
///
/// # Errors
/// 400 for an input that is not a string or a list of strings (token arrays are not
/// supported), an empty one, or an unknown `encoding_format`.
pub fn embedding_job(req: &EmbeddingsRequest, tenant: TenantId) -> Result<NewJob, ApiError> {
    check_model(&req.model)?;
    encoding(req)?;
    let texts: Vec<Value> = match &req.input {
        Value::String(s) => vec![Value::String(s.clone())],
        Value::Array(items) if items.iter().all(Value::is_string) => items.clone(),
        _ => {
            return Err(ApiError::invalid(
                "field `input` must be a string or a list of strings (token arrays are not \
                 supported)",
            ));
        }
    };
    if texts.is_empty()
        || texts
            .iter()
            .any(|t| t.as_str().is_some_and(|s| s.is_empty()))
    {
        return Err(ApiError::invalid("field `input` must not be empty"));
    }
    let mut inputs = Map::new();
    inputs.insert("texts".into(), Value::Array(texts));
    inputs.insert("model".into(), req.model.clone().into());
    let mut spec = task(EMBED, TaskType::Embedding, inputs, &req.model);
    // Embedding models are not routed; any worker with an embedding backend may answer.
    spec.constraints.model = None;
    Ok(one_task_job(
        tenant,
        "embedding",
        &req.model,
        spec,
        "/v1/embeddings",
    ))
}

fn task(
    id: &'static str,
    task_type: TaskType,
    inputs: Map<String, Value>,
    model: &str,
) -> TaskSpec {
    let mut spec = TaskSpec {
        // Invariant: short lowercase literals are valid ids.
        task_id: TaskId::parse(id).expect("a valid task id"),
        task_type,
        inputs,
        dependencies: Vec::new(),
        max_retries: None,
        timeout_sec: None,
        resources: Default::default(),
        constraints: Default::default(),
    };
    spec.constraints.model = Some(model.to_owned());
    spec
}

fn one_task_job(
    tenant: TenantId,
    job_type: &str,
    model: &str,
    spec: TaskSpec,
    endpoint: &str,
) -> NewJob {
    let mut metadata = Map::new();
    metadata.insert("openai_endpoint".into(), endpoint.into());
    NewJob {
        tenant: Some(tenant),
        job_type: job_type.to_owned(),
        input: Value::Object(spec.inputs.clone()),
        priority: Priority::Interactive,
        model: Some(model.to_owned()),
        latency_class: Some("interactive".to_owned()),
        metadata,
        tasks: Some(vec![spec]),
        ..Default::default()
    }
}

/// What a finished chat task said, read from its output.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The generated text.
    pub text: String,
    /// The model that answered (the requested one when the output does not say).
    pub model: String,
    /// Why generation stopped.
    pub finish_reason: String,
    /// Token counts, when the backend reported them.
    pub usage: Option<Value>,
}

impl Answer {
    /// Reads an `llm_inference` output (`text`, `model`, `finish_reason`, `usage`).
    pub fn from_output(output: &Value, requested: &str) -> Answer {
        let text = output["text"].as_str().unwrap_or_default().to_owned();
        Answer {
            text,
            model: output["model"].as_str().unwrap_or(requested).to_owned(),
            finish_reason: output["finish_reason"]
                .as_str()
                .unwrap_or("stop")
                .to_owned(),
            usage: output.get("usage").filter(|u| u.is_object()).cloned(),
        }
    }
}

/// The id clients see for a job's answer: `<prefix>-<job id>`, so it leads back to the job.
pub fn answer_id(prefix: &str, job_id: &str) -> String {
    format!("{prefix}-{job_id}")
}

/// A `chat.completion`.
pub fn chat_completion(id: &str, created: i64, a: &Answer) -> Value {
    let mut out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": a.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": a.text },
            "finish_reason": a.finish_reason,
            "logprobs": null,
        }],
        "system_fingerprint": null,
    });
    if let Some(u) = &a.usage {
        out["usage"] = u.clone();
    }
    out
}

/// A `chat.completion.chunk` with `delta` and `finish_reason`.
pub fn chunk(id: &str, created: i64, model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }],
        "system_fingerprint": null,
    })
}

/// The last chunk of a stream asked to include usage: no choices, the counts.
pub fn usage_chunk(id: &str, created: i64, model: &str, usage: &Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

/// A `response` (the Responses API) holding one assistant message.
pub fn response(id: &str, created: i64, a: &Answer) -> Value {
    let mut out = json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": a.model,
        "output": [{
            "type": "message",
            "id": format!("msg-{id}"),
            "status": "completed",
            "role": "assistant",
            "content": [{ "type": "output_text", "text": a.text, "annotations": [] }],
        }],
        "output_text": a.text,
        "error": null,
        "incomplete_details": null,
    });
    if let Some(u) = &a.usage {
        let count = |k: &str| u[k].as_u64().unwrap_or(0);
        out["usage"] = json!({
            "input_tokens": count("prompt_tokens"),
            "output_tokens": count("completion_tokens"),
            "total_tokens": count("total_tokens"),
        });
    }
    out
}

/// The embeddings answer for an `embedding` output (`vectors`, `model`, `usage`), each
/// vector as floats or, with `encoding_format: base64`, as base64 of little-endian f32s.
///
/// # Errors
/// An output without vectors (500: the worker broke its contract).
pub fn embeddings(req: &EmbeddingsRequest, output: &Value) -> Result<Value, ApiError> {
    let vectors = output["vectors"]
        .as_array()
        .ok_or_else(|| ApiError::internal(&"the embedding output has no `vectors`"))?;
    let base64 = encoding(req)? == "base64";
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let floats: Vec<f32> = v
                .as_array()
                .map(|xs| {
                    xs.iter()
                        .map(|x| x.as_f64().unwrap_or(0.0) as f32)
                        .collect()
                })
                .unwrap_or_default();
            let floats = match req.dimensions.map(|d| d as usize) {
                Some(d) if d > 0 && d < floats.len() => floats[..d].to_vec(),
                _ => floats,
            };
            let embedding = if base64 {
                let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(floats)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    let prompt = output["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    Ok(json!({
        "object": "list",
        "data": data,
        "model": output["model"].as_str().unwrap_or(&req.model),
        "usage": { "prompt_tokens": prompt, "total_tokens": prompt },
    }))
}

fn encoding(req: &EmbeddingsRequest) -> Result<&str, ApiError> {
    match req.encoding_format.as_deref() {
        None | Some("float") => Ok("float"),
        Some("base64") => Ok("base64"),
        Some(other) => Err(ApiError::invalid(format!(
            "field `encoding_format` must be `float` or `base64`, got `{other}`"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn chat_req(body: Value) -> Result<Chat, ApiError> {
        serde_json::from_value::<ChatRequest>(body)
            .unwrap()
            .into_chat()
    }

    /// Messages, the model and the sampling settings reach the one task; streaming flags it.
    #[test]
    fn chat_becomes_one_generate_task_with_the_model() {
        let chat = chat_req(json!({
            "model": "llama3-8b-q4",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5, "temperature": 0.2, "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [],
        }))
        .unwrap();
        assert!(chat.stream && chat.include_usage);
        let job = chat_job(&chat, TenantId::default_tenant(), "/v1/chat/completions");
        assert_eq!(job.model.as_deref(), Some("llama3-8b-q4"));
        let task = &job.tasks.as_ref().unwrap()[0];
        assert_eq!(task.task_id.as_str(), GENERATE);
        assert_eq!(task.task_type, TaskType::LlmInference);
        assert_eq!(task.constraints.model.as_deref(), Some("llama3-8b-q4"));
        assert_eq!(task.inputs["messages"][0]["content"], "hi");
        assert_eq!(task.inputs["max_tokens"], 5);
        assert_eq!(task.inputs["stream"], true);
    }

    /// What SPLAI cannot answer is refused with the field named.
    #[test]
    fn bad_chats_are_refused() {
        let e = chat_req(json!({"model": "m", "messages": [], })).unwrap_err();
        assert!(e.message.contains("messages"), "{}", e.message);
        let e = chat_req(json!({"model": "m", "messages": [{"content": "x"}]})).unwrap_err();
        assert!(e.message.contains("role"), "{}", e.message);
        let e =
            chat_req(json!({"model": "m", "n": 2, "messages": [{"role": "user"}]})).unwrap_err();
        assert!(e.message.contains("n"), "{}", e.message);
    }

    /// A Responses input string becomes a user message after the instructions.
    #[test]
    fn responses_input_and_instructions_become_messages() {
        let req: ResponsesRequest = serde_json::from_value(json!({
            "model": "m", "input": "hello", "instructions": "be brief", "max_output_tokens": 9,
        }))
        .unwrap();
        let chat = req.into_chat().unwrap();
        assert_eq!(
            chat.messages[0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            chat.messages[1],
            json!({"role": "user", "content": "hello"})
        );
        assert_eq!(chat.max_tokens, Some(9));
    }

    /// Base64 embeddings are the little-endian f32 bytes; `dimensions` truncates.
    #[test]
    fn embeddings_encode_floats_or_base64() {
        let req = |format: &str| -> EmbeddingsRequest {
            serde_json::from_value(json!({
                "model": "e", "input": "a", "encoding_format": format, "dimensions": 2,
            }))
            .unwrap()
        };
        let output = json!({"vectors": [[1.0, -2.0, 3.0]], "model": "e",
                            "usage": {"prompt_tokens": 1}});
        let floats = embeddings(&req("float"), &output).unwrap();
        assert_eq!(floats["data"][0]["embedding"], json!([1.0, -2.0]));
        assert_eq!(floats["usage"]["total_tokens"], 1);
        let b64 = embeddings(&req("base64"), &output).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            bytes,
            [1.0_f32, -2.0]
                .iter()
                .flat_map(|f| f.to_le_bytes())
                .collect::<Vec<_>>()
        );
        assert!(embeddings(&req("int8"), &output).is_err());
    }
}
