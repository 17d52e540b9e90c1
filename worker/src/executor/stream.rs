//! Forwarding a streaming task's tokens to the gateway while the task runs.
//!
//! Tokens go through a channel to one sending task, which posts whatever has accumulated as
//! one request (`POST /v1/tasks/{job}/{task}/chunks`), numbered so that a repeated request
//! adds nothing. Forwarding is best effort: the task's output, reported as usual, is the
//! answer; chunks only show it early.

use std::time::Duration;

use splai_shared::engine::Assignment;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::GatewayClient;

/// Attempts per chunk request before the rest of the stream is given up.
const ATTEMPTS: u32 = 3;

/// Pause between attempts.
const PAUSE: Duration = Duration::from_millis(200);

/// How long a finished task waits for its last chunks to be delivered before reporting.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The sending side of one task's stream.
pub(super) struct Forwarder {
    tx: mpsc::UnboundedSender<String>,
    sender: JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding for `task` through `gateway`.
    pub(super) fn start(gateway: GatewayClient, task: &Assignment) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ids = (
            task.job_id.to_string(),
            task.task_id.to_string(),
            task.lease_id.to_string(),
        );
        let sender = tokio::spawn(send_all(gateway, ids, rx));
        Self { tx, sender }
    }

    /// Queues one piece of text.
    pub(super) fn push(&self, token: &str) {
        // The sender stops early only when the lease is gone; the rest is then dropped.
        let _ = self.tx.send(token.to_owned());
    }

    /// Waits (briefly) until everything queued has been sent, so the chunks arrive before
    /// the report that completes the task.
    pub(super) async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(FLUSH_WAIT, self.sender).await;
    }
}

async fn send_all(
    gateway: GatewayClient,
    (job, task, lease): (String, String, String),
    mut rx: mpsc::UnboundedReceiver<String>,
) {
    let mut seq = 0_u32;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut attempt = 1;
        loop {
            match gateway.send_chunks(&job, &task, &lease, seq, &batch).await {
                Ok(true) => break,
                Ok(false) => return,
                Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(job, task, error = %e, "forwarding streamed output failed; the rest goes with the report");
                    return;
                }
            }
        }
        seq = seq.saturating_add(u32::try_from(batch.len()).unwrap_or(u32::MAX));
    }
}
