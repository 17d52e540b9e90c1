//! The audit log in the `AUDIT` partition, sorted by id. An append reads the head (the last
//! item) and puts the event at id + 1 on condition that no item has that id: of two appenders
//! that read the same head, one wins and the other reads the new head and tries again, so the
//! chain cannot fork.

use async_trait::async_trait;

use super::DynamoDb;
use super::item::{ATTEMPTS, Item, json, key, n, pad, pause, s, sdk_err, to_json};
use crate::clock::to_millis;
use crate::domain::{AuditEvent, GENESIS_HASH, NewAuditEvent};
use crate::store::{AuditFilter, AuditLog, StoreError};

/// The audit log in a DynamoDB table, beside the job store.
#[derive(Debug, Clone)]
pub struct DynamoAuditLog {
    db: DynamoDb,
}

impl DynamoAuditLog {
    /// The audit log of `db`'s table.
    pub fn new(db: DynamoDb) -> Self {
        Self { db }
    }
}

fn event_item(e: &AuditEvent) -> Result<Item, StoreError> {
    let ev = &e.event;
    let mut item = key("AUDIT", pad(e.id));
    item.insert("body".into(), s(to_json(e)?));
    item.insert("action".into(), s(ev.action.as_str()));
    item.insert("actor".into(), s(ev.actor.as_str()));
    if let Some(t) = &ev.tenant {
        item.insert("tenant".into(), s(t.as_str()));
    }
    item.insert("result".into(), s(ev.result.as_str()));
    item.insert("created_ms".into(), n(to_millis(ev.created_at)));
    Ok(item)
}

#[async_trait]
impl AuditLog for DynamoAuditLog {
    async fn append(&self, event: NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let db = &self.db;
        // Sixteen appenders racing on one head need many rounds; each lost round is cheap.
        for attempt in 1..=ATTEMPTS * 4 {
            let head = db
                .client
                .query()
                .table_name(&db.table)
                .key_condition_expression("#pk = :a")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":a", s("AUDIT"))
                .scan_index_forward(false)
                .limit(1)
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| sdk_err(db, "query", e))?;
            let (id, prev) = match head.items().first() {
                Some(item) => {
                    let e: AuditEvent = json(item, "body")?;
                    (e.id + 1, e.event_hash)
                }
                None => (1, GENESIS_HASH.to_owned()),
            };
            let e = AuditEvent::chain(id, event.clone(), prev);
            let put = db
                .client
                .put_item()
                .table_name(&db.table)
                .set_item(Some(event_item(&e)?))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", "pk")
                .send()
                .await;
            match put {
                Ok(_) => return Ok(e),
                Err(err)
                    if err
                        .as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    pause(attempt).await;
                }
                Err(err) => return Err(sdk_err(db, "put_item", err)),
            }
        }
        Err(StoreError::Unavailable(
            "dynamodb audit append: too many concurrent appenders; try again".into(),
        ))
    }

    /// Walks the partition newest first with the filters applied by DynamoDB, until the page
    /// (after `offset` matches) is full.
    async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let db = &self.db;
        let mut query = db
            .client
            .query()
            .table_name(&db.table)
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":a", s("AUDIT"))
            .scan_index_forward(false)
            .consistent_read(true);
        let mut conditions = Vec::new();
        let exact = [
            ("action", filter.action.as_deref()),
            ("actor", filter.actor.as_deref()),
            ("tenant", filter.tenant.as_ref().map(|t| t.as_str())),
            ("result", filter.result.as_deref()),
        ];
        for (name, value) in exact {
            if let Some(v) = value {
                conditions.push(format!("#{name} = :{name}"));
                query = query
                    .expression_attribute_names(format!("#{name}"), name)
                    .expression_attribute_values(format!(":{name}"), s(v));
            }
        }
        if filter.from.is_some() || filter.to.is_some() {
            query = query.expression_attribute_names("#c", "created_ms");
        }
        if let Some(from) = filter.from {
            conditions.push("#c >= :from".into());
            query = query.expression_attribute_values(":from", n(to_millis(from)));
        }
        if let Some(to) = filter.to {
            conditions.push("#c < :to".into());
            query = query.expression_attribute_values(":to", n(to_millis(to)));
        }
        query = query.key_condition_expression("#pk = :a");
        if !conditions.is_empty() {
            query = query.filter_expression(conditions.join(" AND "));
        }
        let want = filter.offset as usize + filter.limit as usize;
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < want {
            let page = query
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_err(db, "query", e))?;
            for item in page.items() {
                out.push(json::<AuditEvent>(item, "body")?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(out
            .into_iter()
            .skip(filter.offset as usize)
            .take(filter.limit as usize)
            .collect())
    }

    async fn chain_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let db = &self.db;
        let mut out = Vec::new();
        let mut start = None;
        while out.len() < limit as usize {
            let page = db
                .client
                .query()
                .table_name(&db.table)
                .key_condition_expression("#pk = :a AND #sk > :after")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_values(":a", s("AUDIT"))
                .expression_attribute_values(":after", s(pad(after)))
                .consistent_read(true)
                .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_err(db, "query", e))?;
            for item in page.items() {
                if out.len() < limit as usize {
                    out.push(json::<AuditEvent>(item, "body")?);
                }
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        Ok(out)
    }
}
