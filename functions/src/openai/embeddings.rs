//! `POST /v1/embeddings`: an embedding job, answered in the OpenAI embeddings shape.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::chat::with_job;
use super::translate::{self, EMBED, EmbeddingsRequest};
use super::{OpenAiState, finished, submit, tenant, wait};
use crate::admin::audit::Origin;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;

/// Embeds the input's texts.
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
