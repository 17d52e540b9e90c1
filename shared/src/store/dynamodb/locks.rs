//! Run locks as items `LOCK#<name>`: one conditional put takes a free, lapsed or own lock.

use async_trait::async_trait;

use super::DynamoStore;
use super::item::{key, n, s, sdk_err};
use crate::clock::to_millis;
use crate::domain::Timestamp;
use crate::store::{RunLocks, StoreError};

fn lock_key(name: &str) -> super::item::Item {
    key(format!("LOCK#{name}"), "LOCK")
}

#[async_trait]
impl RunLocks for DynamoStore {
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool, StoreError> {
        let db = &self.db;
        let mut item = lock_key(name);
        item.insert("holder".to_owned(), s(holder));
        item.insert("until_ms".to_owned(), n(to_millis(until)));
        // Own lock included, so an SDK retry of a put that went through still succeeds.
        let put = db
            .client
            .put_item()
            .table_name(&db.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #u <= :now OR #h = :h")
            .expression_attribute_names("#u", "until_ms")
            .expression_attribute_names("#h", "holder")
            .expression_attribute_values(":now", n(to_millis(now)))
            .expression_attribute_values(":h", s(holder))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_err(db, "put_item", e)),
        }
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let db = &self.db;
        let deleted = db
            .client
            .delete_item()
            .table_name(&db.table)
            .set_key(Some(lock_key(name)))
            .condition_expression("#h = :h")
            .expression_attribute_names("#h", "holder")
            .expression_attribute_values(":h", s(holder))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // Lapsed and taken by another holder meanwhile (or already gone): not ours.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_err(db, "delete_item", e)),
        }
    }
}
