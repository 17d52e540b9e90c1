//! `POST /v1/chat/completions` and `POST /v1/responses`: thin handlers over
//! [`translate`](super::translate), [`submit`](super::submit) and the wait or the relay.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::error::OpenAiErrorBody;
use super::translate::{self, Answer, Chat, ChatRequest, GENERATE, ResponsesRequest};
use super::{OpenAiState, finished, relay, submit, tenant, wait};
use crate::admin::audit::Origin;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::openapi::SseEvent;

/// A chat completion, or with `stream: true` its tokens as `chat.completion.chunk` events.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    operation_id = "create_chat_completion",
    tag = "openai",
    request_body = ChatRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant (default `default`)")),
    responses(
        (status = 200, description = "A `chat.completion` object, or with `stream: true` its \
                                      `chat.completion.chunk` events ending in `data: [DONE]`",
         content((Object = "application/json"), (SseEvent = "text/event-stream")),
         headers(("x-splai-job-id" = String, description = "The SPLAI job that ran it"))),
        (status = 400, description = "An invalid request", body = OpenAiErrorBody),
        (status = 502, description = "The job failed; the message is the task's error", body = OpenAiErrorBody),
        (status = 504, description = "The job did not finish within SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS (it was canceled)", body = OpenAiErrorBody),
    )
)]
pub async fn completions(
    State(s): State<OpenAiState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let chat = req.into_chat()?;
    let endpoint = "/v1/chat/completions";
    let new = translate::chat_job(&chat, tenant(&headers, &caller)?, endpoint);
    let mut sub = submit(&s, &origin, new, endpoint).await?;
    if chat.stream {
        return Ok(relay::respond(s, chat, sub));
    }
    let answer = answer(&s, &mut sub, &chat).await?;
    let id = translate::answer_id("chatcmpl", sub.job.as_str());
    let body = translate::chat_completion(&id, sub.created, &answer);
    Ok(with_job(Json(body), &sub.job))
}

/// A response (the Responses API) holding the assistant's message.
#[utoipa::path(
    post,
    path = "/v1/responses",
    operation_id = "create_response",
    tag = "openai",
    request_body = ResponsesRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant (default `default`)")),
    responses(
        (status = 200, description = "A `response` object", body = Object,
         headers(("x-splai-job-id" = String, description = "The SPLAI job that ran it"))),
        (status = 400, description = "An invalid request", body = OpenAiErrorBody),
        (status = 502, description = "The job failed; the message is the task's error", body = OpenAiErrorBody),
        (status = 504, description = "The job did not finish within SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS (it was canceled)", body = OpenAiErrorBody),
    )
)]
pub async fn responses(
    State(s): State<OpenAiState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let chat = req.into_chat()?;
    let endpoint = "/v1/responses";
    let new = translate::chat_job(&chat, tenant(&headers, &caller)?, endpoint);
    let mut sub = submit(&s, &origin, new, endpoint).await?;
    let answer = answer(&s, &mut sub, &chat).await?;
    let id = translate::answer_id("resp", sub.job.as_str());
    Ok(with_job(
        Json(translate::response(&id, sub.created, &answer)),
        &sub.job,
    ))
}

async fn answer(
    s: &OpenAiState,
    sub: &mut super::Submitted,
    chat: &Chat,
) -> Result<Answer, ApiError> {
    let record = finished(s, sub).await?;
    let output = wait::output_of(&s.app, &record, GENERATE).await?;
    Ok(Answer::from_output(&output, &chat.model))
}

/// The answer with `X-SPLAI-Job-Id`, leading back to the job.
pub(super) fn with_job(body: impl IntoResponse, job: &splai_shared::domain::JobId) -> Response {
    ([("x-splai-job-id", job.to_string())], body).into_response()
}
