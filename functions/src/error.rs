//! The one API error type: owns the status table and the `{ "error": { "code", "message" } }`
//! shape. 5xx bodies stay opaque; the cause goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use splai_shared::artifacts::ArtifactError;
use splai_shared::engine::EngineError;
use utoipa::ToSchema;

/// An error answered to an API client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ApiError {
    /// 400 with a message naming the problem.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }

    /// 401: no token, or one the server does not know. The token itself is never repeated.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }

    /// 403: a known token without the scope or tenant the request needs.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }

    /// 413. The body limit is a layer setting the extractor cannot see, so it is not named.
    pub fn too_large() -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large",
            message: "request body is too large".into(),
        }
    }

    /// 503 for a backend that did not answer; the cause is logged, not returned.
    fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "backend unavailable");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: "a backend is unavailable; retry later".into(),
        }
    }

    /// 500; the cause is logged, not returned.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: "internal error".into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        use splai_shared::queue::QueueError;
        use splai_shared::store::StoreError;
        match e {
            EngineError::Invalid(m) => Self::invalid(m),
            EngineError::Plan(p) => Self::invalid(p.to_string()),
            EngineError::NotFound(m) => Self::not_found(m),
            EngineError::Conflict(m) => Self {
                status: StatusCode::CONFLICT,
                code: "conflict",
                message: m,
            },
            EngineError::Store(StoreError::Unavailable(_))
            | EngineError::Queue(QueueError::Unavailable(_)) => Self::unavailable(&e),
            other => Self::internal(&other),
        }
    }
}

impl From<ArtifactError> for ApiError {
    fn from(e: ArtifactError) -> Self {
        match e {
            ArtifactError::NotFound(m) => Self::not_found(format!("artifact not found: {m}")),
            ArtifactError::InvalidUri(u) => Self::not_found(u.to_string()),
            ArtifactError::Unavailable(_) => Self::unavailable(&e),
            other => Self::internal(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail::new(self.code, self.message),
        };
        (self.status, Json(body)).into_response()
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code (`invalid_request`, `not_found`, `unauthorized`,
    /// `forbidden`, `conflict`, `payload_too_large`, `unavailable`, `internal`).
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

impl ErrorDetail {
    /// An error of `code` saying `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}
