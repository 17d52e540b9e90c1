//! The memory store's webhook outbox: deliveries beside the jobs, under the same lock, so a
//! terminal job change and its delivery appear together.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::{DeliveryState, JobId, Timestamp, WebhookAttempt, WebhookDelivery};
use crate::store::{AttemptOutcome, StoreError, WebhookOutbox};

/// A delivery and its lease (token, until).
type Row = (WebhookDelivery, Option<(String, Timestamp)>);

/// Deliveries in creation order (ids are time-ordered UUIDs).
#[derive(Default)]
pub(super) struct Deliveries(BTreeMap<String, Row>);

impl Deliveries {
    pub(super) fn insert(&mut self, owed: Vec<WebhookDelivery>) {
        for d in owed {
            self.0.insert(d.delivery_id.clone(), (d, None));
        }
    }

    /// Whether `job` has a delivery still to send.
    pub(super) fn any_pending(&self, job: &JobId) -> bool {
        self.0
            .values()
            .any(|(d, _)| &d.job_id == job && d.state == DeliveryState::Pending)
    }

    /// Forgets `job`'s deliveries.
    pub(super) fn remove_job(&mut self, job: &JobId) {
        self.0.retain(|_, (d, _)| &d.job_id != job);
    }
}

#[async_trait]
impl WebhookOutbox for MemoryStore {
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        token: &str,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut s = self.lock();
        let mut due: Vec<(Timestamp, String)> = s
            .webhooks
            .0
            .values()
            .filter(|(d, lease)| {
                d.state == DeliveryState::Pending
                    && d.next_attempt_at.is_some_and(|t| t <= now)
                    && lease.as_ref().is_none_or(|(_, until)| *until <= now)
            })
            .map(|(d, _)| (d.next_attempt_at.unwrap_or(now), d.delivery_id.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, id) in due.into_iter().take(limit) {
            if let Some((d, lease)) = s.webhooks.0.get_mut(&id) {
                *lease = Some((token.to_owned(), lease_until));
                out.push(d.clone());
            }
        }
        Ok(out)
    }

    async fn record_webhook_attempt(
        &self,
        delivery_id: &str,
        token: &str,
        attempt: &WebhookAttempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some((d, lease)) = s.webhooks.0.get_mut(delivery_id) else {
            return Ok(false);
        };
        if lease.as_ref().is_none_or(|(t, _)| t != token) {
            return Ok(false);
        }
        *lease = None;
        d.attempts += 1;
        d.attempt_log.push(attempt.clone());
        (d.state, d.next_attempt_at) = outcome.state_and_next();
        Ok(true)
    }

    async fn job_webhooks(&self, job_id: &JobId) -> Result<Vec<WebhookDelivery>, StoreError> {
        Ok(self
            .lock()
            .webhooks
            .0
            .values()
            .filter(|(d, _)| &d.job_id == job_id)
            .map(|(d, _)| d.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::webhooks as contract;

    #[tokio::test]
    async fn terminal_change_writes_one_delivery() {
        contract::terminal_change_writes_one_delivery(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn claims_are_leased_due_and_fenced() {
        contract::claims_are_leased_due_and_fenced(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn outcomes_end_or_reschedule_deliveries() {
        contract::outcomes_end_or_reschedule_deliveries(&MemoryStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_hand_out_each_delivery_once() {
        let s = std::sync::Arc::new(MemoryStore::new());
        contract::concurrent_claims_hand_out_each_delivery_once(s.clone(), s).await;
    }

    #[tokio::test]
    async fn task_events_only_when_asked() {
        contract::task_events_only_when_asked(&MemoryStore::new()).await;
    }
}
