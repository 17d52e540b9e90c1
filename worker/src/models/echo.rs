//! The echo backend.
use async_trait::async_trait;
use super::*;
/// Echo.
pub struct EchoBackend;
#[async_trait]
impl ModelBackend for EchoBackend {
    fn name(&self) -> &str { "echo" }
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError> {
        let text = req.messages.last().map(|m| m.content.clone()).unwrap_or_default();
        Ok(Completion { text, model: "echo".into(), usage: None, finish_reason: None })
    }
    async fn embed(&self, _req: &EmbeddingRequest) -> Result<Embeddings, ModelError> {
        Err(ModelError::Unsupported("todo".into()))
    }
}
