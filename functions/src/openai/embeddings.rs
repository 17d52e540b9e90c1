//! `POST /v1/embeddings`: an embedding job, answered in the OpenAI embeddings shape.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::chat::with_job;
use super::error::OpenAiErrorBody;
use super::translate::{self, EMBED, EmbeddingsRequest};
use super::{OpenAiState, finished, submit, tenant, wait};
use crate::admin::audit::Origin;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// Embeds the input's texts.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    operation_id = "create_embeddings",
    tag = "openai",
    request_body = EmbeddingsRequest,
    params(("X-SPLAI-Tenant" = Option<String>, Header, description = "The tenant (default `default`)")),
    responses(
        (status = 200, description = "A `list` of `embedding` objects", body = Object,
         headers(("x-splai-job-id" = String, description = "The SPLAI job that ran it"))),
        (status = 400, description = "An invalid request", body = OpenAiErrorBody),
        (status = 502, description = "The job failed; the message is the task's error", body = OpenAiErrorBody),
        (status = 504, description = "The job did not finish within SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS (it was canceled)", body = OpenAiErrorBody),
    )
)]
pub async fn embeddings(
    State(s): State<OpenAiState>,
    caller: Caller,
    origin: Origin,
    headers: HeaderMap,
    JsonBody(req): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let new = translate::embedding_job(&req, tenant(&headers, &caller)?)?;
    let mut sub = submit(&s, &origin, new, "/v1/embeddings").await?;
    let record = finished(&s, &mut sub).await?;
    let output = wait::output_of(&s.app, &record, EMBED).await?;
    Ok(with_job(
        Json(translate::embeddings(&req, &output)?),
        &sub.job,
    ))
}
