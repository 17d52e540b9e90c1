//! The in-memory audit log: the chain in a vector behind a mutex, which serialises appends.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::domain::{AuditEvent, GENESIS_HASH, NewAuditEvent};
use crate::store::{AuditFilter, AuditLog, StoreError};

/// Audit events held in process memory. Nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryAuditLog {
    events: Mutex<Vec<AuditEvent>>,
}

impl MemoryAuditLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AuditEvent>> {
        // A panic elsewhere cannot leave the vector half written: every change is one push.
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the stored events, for tests that tamper with them.
    #[cfg(test)]
    pub(crate) fn tamper(&self, f: impl FnOnce(&mut Vec<AuditEvent>)) {
        f(&mut self.lock());
    }
}

#[async_trait]
impl AuditLog for MemoryAuditLog {
    async fn append(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let mut events = self.lock();
        let (id, prev) = events.last().map_or((1, GENESIS_HASH.to_owned()), |h| {
            (h.id + 1, h.event_hash.clone())
        });
        let stored = AuditEvent::chain(id, event, prev);
        events.push(stored.clone());
        Ok(stored)
    }

    async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .rev()
            .filter(|e| filter.admits(e))
            .skip(filter.offset as usize)
            .take(filter.limit as usize)
            .cloned()
            .collect())
    }

    async fn chain_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|e| e.id > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::audit as contract;

    #[tokio::test]
    async fn append_list_filter_and_page() {
        contract::append_list_filter_and_page(&MemoryAuditLog::new()).await;
    }

    #[tokio::test]
    async fn verify_accepts_an_intact_chain() {
        contract::verify_accepts_an_intact_chain(&MemoryAuditLog::new()).await;
    }

    #[tokio::test]
    async fn verify_finds_a_tampered_event() {
        let log = MemoryAuditLog::new();
        let log = &log;
        contract::verify_finds_a_tampered_event(log, |id| async move {
            log.tamper(|events| events[(id - 1) as usize].event.actor = "mallory".into());
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_keep_one_chain() {
        let log: Arc<dyn AuditLog> = Arc::new(MemoryAuditLog::new());
        contract::concurrent_appends_keep_one_chain(log.clone(), log).await;
    }
}
