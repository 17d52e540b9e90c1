//! The development backend: runs no model, answers at once, and says so (`[echo] ...`).
//! Used for local development, tests and throughput benchmarks, so it stays cheap.

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Completion, CompletionRequest, EmbeddingRequest, Embeddings, ModelBackend};
use super::{ModelError, Usage};

/// Vector size when the request names none (the size of common small embedding models).
const DEFAULT_DIMENSION: usize = 384;

/// Answers without a model: completions echo the last user message, embeddings are
/// deterministic unit vectors derived from each text's SHA-256.
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoBackend;

#[async_trait]
impl ModelBackend for EchoBackend {
    fn name(&self) -> &str {
        "echo"
    }

    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError> {
        let last = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .or(req.messages.last())
            .map_or("", |m| m.content.as_str());
        let text = format!("[echo] {last}");
        let prompt_tokens = req.messages.iter().map(|m| words(&m.content)).sum();
        let completion_tokens = words(&text);
        Ok(Completion {
            text,
            model: req.model.clone().unwrap_or_else(|| "echo".to_owned()),
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            }),
            finish_reason: Some("stop".to_owned()),
        })
    }

    /// Hands the answer on word by word (each with its following space), so streaming
    /// clients see several chunks without a model server.
    async fn complete_streaming(
        &self,
        req: &CompletionRequest,
        on_token: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<Completion, ModelError> {
        let completion = self.complete(req).await?;
        for word in completion.text.split_inclusive(' ') {
            on_token(word);
        }
        Ok(completion)
    }

    async fn embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, ModelError> {
        let dimension = req
            .dimensions
            .filter(|&d| d > 0)
            .unwrap_or(DEFAULT_DIMENSION);
        let vectors = req
            .inputs
            .iter()
            .map(|t| hash_vector(t, dimension))
            .collect();
        let prompt_tokens = req.inputs.iter().map(|t| words(t)).sum();
        Ok(Embeddings {
            model: "echo".to_owned(),
            vectors,
            usage: Some(Usage {
                prompt_tokens,
                completion_tokens: 0,
                total_tokens: prompt_tokens,
            }),
        })
    }
}

fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// A unit vector of `dimension` values in [-1, 1] determined by `text` alone: the text's
/// SHA-256 seeds a splitmix64 stream, so any length costs one hash and no extra allocation.
fn hash_vector(text: &str, dimension: usize) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let mut seed = [0_u8; 8];
    seed.copy_from_slice(&digest[..8]);
    let mut state = u64::from_le_bytes(seed);
    let mut v: Vec<f32> = (0..dimension)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            // The top 24 bits fit an f32 mantissa exactly.
            (z >> 40) as f32 / (1_u32 << 23) as f32 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::ChatMessage;

    fn embed(texts: &[&str], dimensions: Option<usize>) -> Embeddings {
        let req = EmbeddingRequest {
            model: None,
            inputs: texts.iter().map(|t| (*t).to_owned()).collect(),
            retries: None,
            dimensions,
        };
        futures::executor::block_on(EchoBackend.embed(&req)).unwrap()
    }

    /// The same text always gives the same unit vector; different texts differ.
    #[test]
    fn embed_is_deterministic_and_unit_length() {
        let a = embed(&["hello", "world"], None);
        let b = embed(&["hello"], None);
        assert_eq!(a.vectors[0], b.vectors[0]);
        assert_ne!(a.vectors[0], a.vectors[1]);
        assert_eq!(a.vectors[0].len(), DEFAULT_DIMENSION);
        for v in &a.vectors {
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        }
        assert_eq!(embed(&["x"], Some(8)).vectors[0].len(), 8);
    }

    /// Completions echo the last user message, marked, with word counts as usage.
    #[test]
    fn complete_echoes_the_last_user_message() {
        let msg = |role: &str, content: &str| ChatMessage {
            role: role.to_owned(),
            content: content.to_owned(),
        };
        let req = CompletionRequest {
            messages: vec![msg("system", "be terse"), msg("user", "two words")],
            ..Default::default()
        };
        let c = futures::executor::block_on(EchoBackend.complete(&req)).unwrap();
        assert_eq!(c.text, "[echo] two words");
        assert_eq!(c.model, "echo");
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        let usage = c.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 3));
    }
}
