//! The memory store's run locks, under its one lock.

use async_trait::async_trait;

use super::MemoryStore;
use crate::domain::Timestamp;
use crate::store::{RunLocks, StoreError};

#[async_trait]
impl RunLocks for MemoryStore {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let taken = s
            .locks
            .get(name)
            .is_some_and(|(h, deadline)| h != holder && *deadline > now);
        if !taken {
            s.locks.insert(name.to_owned(), (holder.to_owned(), until));
        }
        Ok(!taken)
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut s = self.lock();
        if s.locks.get(name).is_some_and(|(h, _)| h == holder) {
            s.locks.remove(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn one_holder_at_a_time() {
        crate::testing::locks::one_holder_at_a_time(&super::MemoryStore::new()).await;
    }
}
