//! TODO
use serde_json::Value;
use splai_shared::engine::Assignment;
use super::{Executors, TaskError};
pub(super) async fn run(_ex: &Executors, _task: &Assignment) -> Result<Value, TaskError> {
    Err(TaskError::Permanent("not implemented".into()))
}
