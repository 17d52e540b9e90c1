//! The OpenAI API as vLLM, llama.cpp server and hosted APIs serve it
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`).

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{
    MODELS, StreamPace, answer_to, inputs_of, last_user_message, model_of, paced, pieces,
    vector_for, words,
};

/// SSE: a `chat.completion.chunk` per piece, one with the finish reason, the usage when
/// `stream_options.include_usage` asks for it, then `data: [DONE]`.
fn streamed(body: &Value, text: &str, prompt_words: u64, pace: StreamPace) -> Response {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-double",
            "object": "chat.completion.chunk",
            "created": 1_704_067_200,
            "model": model_of(body),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events: Vec<Value> = pieces(text)
        .iter()
        .map(|p| chunk(json!({"role": "assistant", "content": p}), Value::Null))
        .collect();
    events.push(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"] == true {
        let c = words(text);
        let mut usage = chunk(json!({}), Value::Null);
        usage["choices"] = json!([]);
        usage["usage"] = json!({
            "prompt_tokens": prompt_words,
            "completion_tokens": c,
            "total_tokens": prompt_words + c,
        });
        events.push(usage);
    }
    let mut lines: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    lines.push("data: [DONE]\n\n".to_owned());
    paced(lines, pace, "text/event-stream")
}

/// `/v1/chat/completions`.
pub(super) async fn chat(
    Extension(pace): Extension<StreamPace>,
    Json(body): Json<Value>,
) -> Response {
    let (prompt, prompt_words) = last_user_message(&body);
    let text = answer_to(&prompt);
    if body["stream"] == true {
        return streamed(&body, &text, prompt_words, pace);
    }
    let completion_words = words(&text);
    Json(json!({
        "id": "chatcmpl-double",
        "object": "chat.completion",
        "created": 1_704_067_200,
        "model": model_of(&body),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words,
            "total_tokens": prompt_words + completion_words,
        },
    }))
    .into_response()
}

/// `/v1/completions`.
pub(super) async fn completions(Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    let text = answer_to(prompt);
    let (p, c) = (words(prompt), words(&text));
    Json(json!({
        "id": "cmpl-double",
        "object": "text_completion",
        "created": 1_704_067_200,
        "model": model_of(&body),
        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
    }))
    .into_response()
}

/// `/v1/embeddings`.
pub(super) async fn embeddings(Json(body): Json<Value>) -> Response {
    let inputs = inputs_of(&body);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": vector_for(t)}))
        .collect();
    let tokens: u64 = inputs.iter().map(|t| words(t)).sum();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model_of(&body),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// `/v1/models`.
pub(super) async fn models() -> Response {
    let data: Vec<Value> = MODELS
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 1_704_067_200, "owned_by": "double"}),
        )
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}
