//! The SQS calls the queue makes, ten entries per batch call, each counted, with SDK errors
//! mapped to [`QueueError`] here so no SDK type leaves the module.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use super::QueueError;

/// Longest visibility SQS accepts (12 h).
const MAX_VISIBILITY_SECS: i32 = 43_200;
/// Most entries per batch call and messages per receive.
pub(super) const BATCH: usize = 10;

/// A received message.
#[derive(Debug, Clone)]
pub(super) struct Received {
    pub(super) handle: String,
    pub(super) body: String,
    /// `ApproximateReceiveCount`, this receive included.
    pub(super) receives: u32,
    /// `SentTimestamp`, milliseconds.
    pub(super) sent_ms: i64,
}

/// A message to send.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub(super) body: String,
    /// The tenant: the message group of an SQS fair queue.
    pub(super) group: Option<String>,
}

/// The client and the four queue URLs (interactive, standard, batch, dead).
#[derive(Debug)]
pub(super) struct Api {
    pub(super) client: Client,
    pub(super) urls: [String; 4],
    requests: AtomicU64,
}

pub(super) fn unavailable(what: &str, e: impl std::error::Error) -> QueueError {
    QueueError::Unavailable(format!("sqs {what}: {}", DisplayErrorContext(e)))
}

/// A visibility timeout in whole seconds, rounded up (a lease is never shorter than asked),
/// within SQS's limit.
pub(super) fn visibility(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s)
        .unwrap_or(MAX_VISIBILITY_SECS)
        .min(MAX_VISIBILITY_SECS)
}

/// A long-poll wait in whole seconds: rounded to the nearest (the engine's deadline is met
/// within half a second), at most SQS's 20.
pub(super) fn wait_secs(wait: Duration) -> i32 {
    let s = (wait + Duration::from_millis(500)).as_secs().min(20);
    i32::try_from(s).unwrap_or(20)
}

impl Api {
    pub(super) fn new(client: Client, urls: [String; 4]) -> Self {
        Self {
            client,
            urls,
            requests: AtomicU64::new(0),
        }
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// SQS requests made so far.
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Receives up to `max` (≤ 10) messages of queue `q`, hidden for `visible_after`, waiting up
    /// to `wait` (to the nearest second, at most 20) for the first.
    pub(super) async fn receive(
        &self,
        q: usize,
        max: usize,
        visible_after: Duration,
        wait: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        self.count();
        let out = self
            .client
            .receive_message()
            .queue_url(&self.urls[q])
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .visibility_timeout(visibility(visible_after))
            .wait_time_seconds(wait_secs(wait))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let attr = |name| {
                    m.attributes()
                        .and_then(|a| a.get(&name))
                        .and_then(|v| v.parse::<i64>().ok())
                };
                Some(Received {
                    handle: m.receipt_handle()?.to_owned(),
                    body: m.body()?.to_owned(),
                    receives: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(1),
                    sent_ms: attr(MessageSystemAttributeName::SentTimestamp).unwrap_or(0),
                })
            })
            .collect())
    }

    /// Sends messages to queue `q`. Fails if any was refused; resending the lot is safe, since
    /// a duplicate delivery is dropped at claim.
    pub(super) async fn send(&self, q: usize, msgs: &[Outgoing]) -> Result<(), QueueError> {
        for chunk in msgs.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&m.body)
                        .set_message_group_id(m.group.clone())
                        .build()
                        .map_err(|e| unavailable("SendMessageBatch entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.count();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.urls[q])
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable("SendMessageBatch", e))?;
            if let Some(f) = out.failed().first() {
                return Err(QueueError::Unavailable(format!(
                    "sqs SendMessageBatch refused {} message(s): {} {}",
                    out.failed().len(),
                    f.code(),
                    f.message().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Deletes messages of queue `q`. A handle SQS no longer knows (the message is gone) is not
    /// an error: deleting is asking for it to be gone.
    pub(super) async fn delete(&self, q: usize, handles: &[&str]) -> Result<(), QueueError> {
        // A batch may not name a message twice (a repeated report acks its lease twice).
        let mut unique: Vec<&str> = Vec::with_capacity(handles.len());
        for h in handles {
            if !unique.contains(h) {
                unique.push(h);
            }
        }
        for chunk in unique.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*h)
                        .build()
                        .map_err(|e| unavailable("DeleteMessageBatch entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.count();
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.urls[q])
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable("DeleteMessageBatch", e))?;
            for f in out.failed() {
                tracing::debug!(code = f.code(), "sqs delete of a message already gone");
            }
        }
        Ok(())
    }

    /// Sets the visibility of messages of queue `q`; per message, whether SQS accepted it
    /// (a refused one is no longer held under that handle).
    pub(super) async fn set_visibility(
        &self,
        q: usize,
        items: &[(&str, Duration)],
    ) -> Result<Vec<bool>, QueueError> {
        // A batch may not name a message twice: the first of each handle is sent, and its
        // answer stands for the repeats.
        let mut unique: Vec<(&str, Duration)> = Vec::with_capacity(items.len());
        for (h, d) in items {
            if !unique.iter().any(|(u, _)| u == h) {
                unique.push((h, *d));
            }
        }
        let mut ok = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (h, d))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*h)
                        .visibility_timeout(visibility(*d))
                        .build()
                        .map_err(|e| unavailable("ChangeMessageVisibilityBatch entry", e))
                })
                .collect::<Result<Vec<_>, _>>()?;
            self.count();
            let out = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.urls[q])
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| unavailable("ChangeMessageVisibilityBatch", e))?;
            let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
            ok.extend((0..chunk.len()).map(|i| !failed.contains(&i.to_string().as_str())));
        }
        Ok(items
            .iter()
            .map(|(h, _)| {
                unique
                    .iter()
                    .position(|(u, _)| u == h)
                    .is_some_and(|i| ok[i])
            })
            .collect())
    }

    /// Queue attributes as numbers (the approximate counts).
    pub(super) async fn counts(
        &self,
        q: usize,
        names: &[QueueAttributeName],
    ) -> Result<Vec<u64>, QueueError> {
        self.count();
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.urls[q])
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| unavailable("GetQueueAttributes", e))?;
        Ok(names
            .iter()
            .map(|n| {
                out.attributes()
                    .and_then(|a| a.get(n))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }
}
