//! Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`,
//! `/api/tags`), answering as Ollama does: one object, or with `stream: true` one object per
//! line (a piece of the text each, the counts in the last, `done: true`).

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::{
    CREATED_AT, MODELS, StreamPace, answer_to, inputs_of, last_user_message, model_of, paced,
    pieces, vector_for, words,
};

/// NDJSON lines: each piece under `key` (`message` or `response`), then the final counts.
fn streamed(body: &Value, text: &str, prompt_words: u64, chat: bool, pace: StreamPace) -> Response {
    let piece = |t: &str| {
        if chat {
            json!({"message": {"role": "assistant", "content": t}})
        } else {
            json!({"response": t})
        }
    };
    let mut lines: Vec<String> = pieces(text)
        .iter()
        .map(|p| {
            let mut line = piece(p);
            line["model"] = json!(model_of(body));
            line["created_at"] = json!(CREATED_AT);
            line["done"] = json!(false);
            format!("{line}\n")
        })
        .collect();
    let mut last = piece("");
    last["model"] = json!(model_of(body));
    last["created_at"] = json!(CREATED_AT);
    last["done"] = json!(true);
    last["done_reason"] = json!("stop");
    last["prompt_eval_count"] = json!(prompt_words);
    last["eval_count"] = json!(words(text));
    lines.push(format!("{last}\n"));
    paced(lines, pace, "application/x-ndjson")
}

/// `/api/chat`.
pub(super) async fn chat(
    Extension(pace): Extension<StreamPace>,
    Json(body): Json<Value>,
) -> Response {
    let (prompt, prompt_words) = last_user_message(&body);
    let text = answer_to(&prompt);
    if body["stream"] == true {
        return streamed(&body, &text, prompt_words, true, pace);
    }
    Json(json!({
        "model": model_of(&body),
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": text},
        "done": true,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "prompt_eval_count": prompt_words,
        "eval_count": words(&text),
    }))
    .into_response()
}

/// `/api/generate`.
pub(super) async fn generate(
    Extension(pace): Extension<StreamPace>,
    Json(body): Json<Value>,
) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    let text = answer_to(prompt);
    if body["stream"] == true {
        return streamed(&body, &text, words(prompt), false, pace);
    }
    Json(json!({
        "model": model_of(&body),
        "created_at": CREATED_AT,
        "response": text,
        "done": true,
        "done_reason": "stop",
        "total_duration": 1_000_000,
        "prompt_eval_count": words(prompt),
        "eval_count": words(&text),
    }))
    .into_response()
}

/// `/api/embed`.
pub(super) async fn embed(Json(body): Json<Value>) -> Response {
    let inputs = inputs_of(&body);
    let vectors: Vec<Vec<f32>> = inputs.iter().map(|t| vector_for(t)).collect();
    Json(json!({
        "model": model_of(&body),
        "embeddings": vectors,
        "total_duration": 1_000_000,
        "prompt_eval_count": inputs.iter().map(|t| words(t)).sum::<u64>(),
    }))
    .into_response()
}

/// `/api/embeddings` (one text per call).
pub(super) async fn embeddings(Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default();
    Json(json!({ "embedding": vector_for(prompt) })).into_response()
}

/// `/api/tags`.
pub(super) async fn tags() -> Response {
    let models: Vec<Value> = MODELS
        .iter()
        .map(|m| {
            json!({
                "name": m,
                "model": m,
                "modified_at": CREATED_AT,
                "size": 4_000_000_000_u64,
                "digest": format!("sha256:{}", "0".repeat(64)),
            })
        })
        .collect();
    Json(json!({ "models": models })).into_response()
}
