//! Changes that finish even when their client goes away.
//!
//! axum drops a handler's future when its client disconnects. With a store reached over the
//! network (Postgres, DynamoDB) the commit may already be on its way, so the change can land
//! while the engine never does what follows it: the queue ack (the task is then delivered
//! again, and acked as stale), the job events (a stream watching the job would wait for a
//! terminal event that never comes) and the metrics (a completed job would go uncounted).
//! A worker killed mid-report does exactly this. Running the engine call on a task of its
//! own lets it finish whatever the connection does; the client, gone, just misses the answer.
//!
//! Long polls are not detached: a claim whose client left must stop waiting, not take tasks
//! for nobody.

use std::sync::Arc;

use splai_shared::engine::{Engine, EngineError};
use tracing::Instrument;

use crate::error::ApiError;

/// Runs `change` on the engine in a task of its own and waits for it.
///
/// # Errors
/// The change's own error, or an internal error if it panicked.
pub async fn detached<T, Fut>(
    engine: &Arc<Engine>,
    change: impl FnOnce(Arc<Engine>) -> Fut,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    Fut: Future<Output = Result<T, EngineError>> + Send + 'static,
{
    // Under the request's span, so the change stays part of the request's trace.
    let change = change(engine.clone()).instrument(tracing::Span::current());
    match tokio::spawn(change).await {
        Ok(done) => Ok(done?),
        Err(e) => Err(ApiError::internal(&format!("the change failed: {e}"))),
    }
}
