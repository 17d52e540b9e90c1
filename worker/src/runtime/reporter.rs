//! Delivers reports in batches: one request in flight at a time, carrying everything that
//! finished while the previous one was out. Transient failures are retried until delivered;
//! idempotency keys make a resent report harmless.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::backoff::Backoff;
use crate::client::{GatewayError, Report};

/// Most reports one request carries (the gateway's limit).
const MAX_BATCH: usize = 1000;

/// Most bytes of reports one request carries, well under the gateway's default 4 MiB body
/// limit even with large inline outputs.
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// The sending side: executions queue their reports here.
#[derive(Clone)]
pub(crate) struct Reports(mpsc::UnboundedSender<Report>);

impl Reports {
    /// A queue and its receiving end, for [`deliver_reports`].
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<Report>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Queues a report. The receiver lives as long as the worker, so this cannot fail
    /// before shutdown; after it, a report has nowhere to go and its lease simply expires.
    pub(crate) fn send(&self, report: Report) {
        if self.0.send(report).is_err() {
            tracing::warn!("report queued after the reporter stopped; its lease will expire");
        }
    }
}

/// Sends queued reports until `closing` fires and the queue is empty, or `give_up` fires.
pub(crate) async fn deliver_reports(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    closing: CancellationToken,
    give_up: CancellationToken,
) {
    // A report that would have overflowed the previous batch starts the next one.
    let mut carried: Option<Report> = None;
    loop {
        let first = match carried.take() {
            Some(r) => Some(r),
            None => tokio::select! {
                r = rx.recv() => r,
                () = closing.cancelled() => rx.try_recv().ok(),
            },
        };
        let Some(first) = first else { return };
        let mut bytes = first.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) if bytes + r.encoded_len() > MAX_BATCH_BYTES => {
                    carried = Some(r);
                    break;
                }
                Ok(r) => {
                    bytes += r.encoded_len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        if !deliver(&shared, &batch, &give_up).await {
            tracing::warn!(
                unsent = batch.len() + rx.len() + usize::from(carried.is_some()),
                "giving up on reports at shutdown; their leases will expire and the tasks rerun"
            );
            return;
        }
    }
}

/// Sends one batch until it is accepted; `false` if `give_up` fired first.
async fn deliver(shared: &Shared, batch: &[Report], give_up: &CancellationToken) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(50), shared.retry_max);
    loop {
        match shared.gateway.report(batch).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                if backoff.failures().is_multiple_of(10) {
                    tracing::warn!(error = %e, reports = batch.len(), "report failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    () = give_up.cancelled() => return false,
                }
            }
            Err(e @ (GatewayError::Rejected { .. } | GatewayError::NotRegistered(_))) => {
                // Not a delivery problem: resending the same batch would be refused again.
                tracing::error!(error = %e, reports = batch.len(), "gateway refused reports");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "unexpected report failure");
                break;
            }
        }
    }
    for r in batch {
        shared.registry.remove(&crate::client::HeldLease {
            job_id: r.job_id.clone(),
            task_id: r.task_id.clone(),
            lease_id: r.lease_id.clone(),
        });
    }
    true
}
