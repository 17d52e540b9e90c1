//! `GET /v1/models`: the models SPLAI can route to, from the inventories of healthy
//! registered workers and the routing file, in the OpenAI list shape.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use splai_shared::domain::{ANY_MODEL, WorkerHealth};

use super::OpenAiState;
use crate::error::ApiError;

/// The routable models, sorted. A worker serving any model (`*`, the dev echo backend) adds
/// no name of its own: there is nothing to list for it.
#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "list_models",
    tag = "openai",
    responses((status = 200, description = "A `list` of `model` objects", body = Object))
)]
pub async fn list(State(s): State<OpenAiState>) -> Result<Json<Value>, ApiError> {
    let engine = &s.app.engine;
    let mut models: BTreeSet<String> = BTreeSet::new();
    for w in engine.list_workers().await? {
        if w.health == WorkerHealth::Healthy {
            models.extend(w.registration.models.into_iter().filter(|m| m != ANY_MODEL));
        }
    }
    if let Some(routing) = engine.planner().routing() {
        models.extend(routing.default_model.iter().cloned());
        models.extend(routing.rules.iter().filter_map(|r| r.use_model.clone()));
    }
    let data: Vec<Value> = models
        .into_iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "splai" }))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}
