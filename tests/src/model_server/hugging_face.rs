//! Hugging Face's hub API as `model_download` uses it: the model listing
//! (`/api/models/{org}/{name}/revision/{rev}`) and file downloads
//! (`/{org}/{name}/resolve/{rev}/{file}`), serving [`HF_FILES`] for any repository.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The files of every Hugging Face repository the double serves, by `rfilename`.
pub const HF_FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "1_Pooling/config.json",
];

/// The contents of a served Hugging Face file, `None` for a name not in [`HF_FILES`].
pub fn hf_file(name: &str) -> Option<Vec<u8>> {
    match name {
        "config.json" => Some(br#"{"model_type":"double","hidden_size":8}"#.to_vec()),
        "tokenizer.json" => Some(br#"{"version":"1.0","model":{"type":"WordLevel"}}"#.to_vec()),
        // Large enough to arrive in several chunks.
        "model.safetensors" => Some((0..64 * 1024).map(|i| (i % 251) as u8).collect()),
        "1_Pooling/config.json" => Some(br#"{"pooling_mode_mean_tokens":true}"#.to_vec()),
        _ => None,
    }
}

/// The model listing: every repository has [`HF_FILES`].
pub(super) async fn model_info(
    Path((org, name, _rev)): Path<(String, String, String)>,
) -> Response {
    let siblings: Vec<Value> = HF_FILES.iter().map(|f| json!({"rfilename": f})).collect();
    Json(json!({
        "_id": "double",
        "id": format!("{org}/{name}"),
        "modelId": format!("{org}/{name}"),
        "sha": "0123456789abcdef0123456789abcdef01234567",
        "private": false,
        "siblings": siblings,
    }))
    .into_response()
}

/// A file of [`HF_FILES`], or Hugging Face's 404.
pub(super) async fn resolve(
    Path((_org, _name, _rev, file)): Path<(String, String, String, String)>,
) -> Response {
    match hf_file(&file) {
        Some(bytes) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            Bytes::from(bytes),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [("x-error-code", "EntryNotFound")],
            Json(json!({"error": "Entry not found"})),
        )
            .into_response(),
    }
}
