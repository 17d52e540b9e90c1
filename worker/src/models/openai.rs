//! TODO
use async_trait::async_trait;
use super::*;
use crate::config::Endpoint;
/// TODO.
pub struct OpenAiBackend;
impl OpenAiBackend {
    /// TODO.
    pub fn new(_name: &str, _http: reqwest::Client, _e: Endpoint, _m: Option<String>, _r: u32) -> Self { Self }
}
#[async_trait]
impl ModelBackend for OpenAiBackend {
    fn name(&self) -> &str { "openai" }
    async fn complete(&self, _req: &CompletionRequest) -> Result<Completion, ModelError> { Err(ModelError::Unsupported("todo".into())) }
    async fn embed(&self, _req: &EmbeddingRequest) -> Result<Embeddings, ModelError> { Err(ModelError::Unsupported("todo".into())) }
}
