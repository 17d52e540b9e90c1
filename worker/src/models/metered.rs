//! A [`ModelBackend`] that times every call of the backend it wraps and counts its errors
//! (`worker_executor_duration_seconds`, `worker_model_errors_total`).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Completion, CompletionRequest, EmbeddingRequest, Embeddings, ModelBackend, ModelError,
};
use crate::metrics::WorkerMetrics;

/// Wraps a backend with metrics.
pub struct Metered {
    inner: Arc<dyn ModelBackend>,
    metrics: Arc<WorkerMetrics>,
}

impl Metered {
    /// `inner`, measured into `metrics`.
    pub fn new(inner: Arc<dyn ModelBackend>, metrics: Arc<WorkerMetrics>) -> Self {
        Self { inner, metrics }
    }

    /// Records one call: the model that answered, else the one asked for, else `default`.
    fn record(
        &self,
        asked: Option<&str>,
        answered: Option<&str>,
        started: Instant,
        err: Option<&ModelError>,
    ) {
        let model = answered.or(asked).unwrap_or("default");
        let secs = started.elapsed().as_secs_f64();
        self.metrics.model_call(self.inner.name(), model, secs, err);
    }
}

#[async_trait]
impl ModelBackend for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ModelError> {
        let started = Instant::now();
        let out = self.inner.complete(req).await;
        let answered = out.as_ref().ok().map(|c| c.model.as_str());
        self.record(req.model.as_deref(), answered, started, out.as_ref().err());
        out
    }

    async fn complete_streaming(
        &self,
        req: &CompletionRequest,
        on_token: &(dyn for<'t> Fn(&'t str) + Send + Sync),
    ) -> Result<Completion, ModelError> {
        // Forwarded, not left to the trait's default: that would call `complete` and lose the
        // inner backend's streaming.
        let started = Instant::now();
        let out = self.inner.complete_streaming(req, on_token).await;
        let answered = out.as_ref().ok().map(|c| c.model.as_str());
        self.record(req.model.as_deref(), answered, started, out.as_ref().err());
        out
    }

    async fn embed(&self, req: &EmbeddingRequest) -> Result<Embeddings, ModelError> {
        let started = Instant::now();
        let out = self.inner.embed(req).await;
        let answered = out.as_ref().ok().map(|e| e.model.as_str());
        self.record(req.model.as_deref(), answered, started, out.as_ref().err());
        out
    }

    async fn list_models(&self) -> Vec<String> {
        self.inner.list_models().await
    }
}
