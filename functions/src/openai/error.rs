//! The OpenAI error shape, `{"error": {"message", "type", "param", "code"}}`, for every error
//! this router answers: handlers, extractors and the auth layer all produce [`ApiError`]s,
//! and [`reshape`] rewrites their bodies on the way out, so no error path is missed.

use axum::body::{Body, to_bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;

/// The name of [`OpenAiErrorBody`]'s schema in the OpenAPI document.
pub const SCHEMA: &str = "OpenAiErrorBody";

/// The OpenAI error body, as [`body`] writes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a schema only: `body` writes this shape.
pub struct OpenAiErrorBody {
    error: OpenAiError,
}

/// What went wrong, in the OpenAI shape.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct OpenAiError {
    message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `timeout_error` or `server_error`.
    #[schema(rename = "type")]
    kind: String,
    /// Always `null`.
    param: Option<String>,
    /// SPLAI's error code.
    code: String,
}

/// Largest error body rewritten (errors are small; anything else passes unchanged).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// 504: the job did not finish within `SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS` (and was canceled).
pub fn timed_out(job: &str, secs: u64) -> ApiError {
    ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: "timeout",
        message: format!(
            "job {job} did not finish within {secs} s (SPLAI_OPENAI_COMPAT_TIMEOUT_SECONDS); it \
             was canceled"
        ),
    }
}

/// 502: the job failed or was canceled; the message is the task's error.
pub fn job_failed(message: String) -> ApiError {
    ApiError {
        status: StatusCode::BAD_GATEWAY,
        code: "job_failed",
        message,
    }
}

/// The OpenAI `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        504 => "timeout_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

/// The OpenAI error body for `e`.
pub fn body(e: &ApiError) -> Value {
    json!({
        "error": {
            "message": e.message,
            "type": error_type(e.status),
            "param": null,
            "code": e.code,
        }
    })
}

/// Rewrites an error response of this router into the OpenAI shape: a SPLAI error body
/// keeps its message and code; any other body (axum's plain-text 405) becomes the message.
pub async fn reshape(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = to_bytes(body, ERROR_BODY_LIMIT).await else {
        return (
            status,
            axum::Json(body_of(status, "error body too large", "error")),
        )
            .into_response();
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    if error.is_some_and(|e| e.get("type").is_some()) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let message = error.and_then(|e| e["message"].as_str()).map_or_else(
        || String::from_utf8_lossy(&bytes).trim().to_owned(),
        str::to_owned,
    );
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let code = error
        .and_then(|e| e["code"].as_str())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"))
        .to_owned();
    let out = serde_json::to_vec(&body_of(status, &message, &code)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(out))
}

fn body_of(status: StatusCode, message: &str, code: &str) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type(status),
            "param": null,
            "code": code,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reshaped(resp: Response) -> (StatusCode, Value) {
        let resp = reshape(resp).await;
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), ERROR_BODY_LIMIT).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// A SPLAI error keeps status, message and code, and gains the OpenAI type.
    #[tokio::test]
    async fn splai_errors_get_the_openai_shape() {
        let (status, body) = reshaped(ApiError::unauthorized("no token").into_response()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            body,
            json!({"error": {"message": "no token", "type": "authentication_error",
                             "param": null, "code": "unauthorized"}})
        );
        let plain = (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
        let (_, body) = reshaped(plain).await;
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "Method Not Allowed");
    }

    /// Success passes untouched.
    #[tokio::test]
    async fn success_is_left_alone() {
        let resp = reshape((StatusCode::OK, "fine").into_response()).await;
        let bytes = to_bytes(resp.into_body(), 100).await.unwrap();
        assert_eq!(&bytes[..], b"fine");
    }
}
