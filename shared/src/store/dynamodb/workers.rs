//! Registered workers: one item each (`WORKER#<id>`), listed by id through `gsi1` and by last
//! heartbeat through `gsi2`.

use async_trait::async_trait;

use super::DynamoStore;
use super::item::{Item, get_n, get_s, json, key, n, pad, query_all, s, sdk_err, to_json};
use crate::clock::{from_millis, to_millis};
use crate::domain::{Heartbeat, Timestamp, Worker, WorkerHealth, WorkerId, WorkerRegistration};
use crate::store::{StoreError, WorkerStore};

fn worker_key(id: &WorkerId) -> Item {
    key(format!("WORKER#{id}"), "WORKER")
}

fn decode(item: &Item, stale_before: Timestamp) -> Result<Worker, StoreError> {
    let last_heartbeat = from_millis(get_n(item, "heartbeat_ms")?);
    Ok(Worker {
        worker_id: WorkerId::parse(get_s(item, "worker_id")?)
            .map_err(|e| StoreError::Corrupt(format!("worker id: {e}")))?,
        registration: json(item, "reg")?,
        load: json(item, "load")?,
        health: if last_heartbeat < stale_before {
            WorkerHealth::Stale
        } else {
            WorkerHealth::Healthy
        },
        registered_at: from_millis(get_n(item, "registered_ms")?),
        last_heartbeat,
    })
}

#[async_trait]
impl WorkerStore for DynamoStore {
    async fn register_worker(
        &self,
        id: &WorkerId,
        registration: &WorkerRegistration,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let db = &self.db;
        let at = to_millis(at);
        let mut item = worker_key(id);
        item.insert("worker_id".into(), s(id.as_str()));
        item.insert("reg".into(), s(to_json(registration)?));
        item.insert("load".into(), s(to_json(&Heartbeat::default())?));
        item.insert("registered_ms".into(), n(at));
        item.insert("heartbeat_ms".into(), n(at));
        item.insert("gsi1pk".into(), s("WORKERS"));
        item.insert("gsi1sk".into(), s(id.as_str()));
        item.insert("gsi2pk".into(), s("WORKERBEAT"));
        item.insert("gsi2sk".into(), s(format!("{}#{id}", pad(at))));
        db.client
            .put_item()
            .table_name(&db.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_err(db, "put_item", e))?;
        Ok(())
    }

    async fn record_heartbeat(
        &self,
        id: &WorkerId,
        heartbeat: &Heartbeat,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let db = &self.db;
        let at = to_millis(at);
        let out = db
            .client
            .update_item()
            .table_name(&db.table)
            .set_key(Some(worker_key(id)))
            .update_expression("SET #l = :l, #h = :h, #g = :g")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#l", "load")
            .expression_attribute_names("#h", "heartbeat_ms")
            .expression_attribute_names("#g", "gsi2sk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":l", s(to_json(heartbeat)?))
            .expression_attribute_values(":h", n(at))
            .expression_attribute_values(":g", s(format!("{}#{id}", pad(at))))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk_err(db, "update_item", e)),
        }
    }

    async fn get_worker(
        &self,
        id: &WorkerId,
        stale_before: Timestamp,
    ) -> Result<Option<Worker>, StoreError> {
        let db = &self.db;
        let out = db
            .client
            .get_item()
            .table_name(&db.table)
            .set_key(Some(worker_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err(db, "get_item", e))?;
        out.item().map(|i| decode(i, stale_before)).transpose()
    }

    async fn list_workers(&self, stale_before: Timestamp) -> Result<Vec<Worker>, StoreError> {
        let items = query_all(&self.db, |q| {
            q.index_name("gsi1")
                .key_condition_expression("#pk = :w")
                .expression_attribute_names("#pk", "gsi1pk")
                .expression_attribute_values(":w", s("WORKERS"))
        })
        .await?;
        items.iter().map(|i| decode(i, stale_before)).collect()
    }
}
