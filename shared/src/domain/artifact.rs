//! Artifacts: where a task's output lives, and what is known about it.

use serde::{Deserialize, Serialize};

use super::Timestamp;

/// A stored output, as recorded on its task (SPEC §2: `{type, url, size_bytes, mime_type,
/// expires_at}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Artifact {
    /// The artifact backend that holds it: `local` or `s3`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its address: `artifact://<job>/<task>/<name>`.
    pub url: String,
    /// Its length in bytes.
    pub size_bytes: u64,
    /// Its media type, e.g. `application/json`.
    pub mime_type: String,
    /// When the backend may delete it; `None` while no retention applies.
    #[serde(default, with = "super::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}
