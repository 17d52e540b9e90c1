//! TODO
use async_trait::async_trait;
use super::*;
use crate::config::Endpoint;
/// TODO.
pub struct OllamaBackend;
impl OllamaBackend {
    /// TODO.
    pub fn new(_http: reqwest::Client, _e: Endpoint, _m: Option<String>, _r: u32) -> Self { Self }
}
#[async_trait]
impl ModelBackend for OllamaBackend {
    fn name(&self) -> &str { "ollama" }
    async fn complete(&self, _req: &CompletionRequest) -> Result<Completion, ModelError> { Err(ModelError::Unsupported("todo".into())) }
    async fn embed(&self, _req: &EmbeddingRequest) -> Result<Embeddings, ModelError> { Err(ModelError::Unsupported("todo".into())) }
}
