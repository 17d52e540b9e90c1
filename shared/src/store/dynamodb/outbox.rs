//! The dispatch outbox: one item per commit (or per 128 entries of it) in the `OUTBOX`
//! partition, sorted by an ordering number; an entry's id is that number × 128 + its index.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, TransactWriteItem};
use serde::{Deserialize, Serialize};

use super::DynamoDb;
use super::item::{Item, get_n, get_s, json, key, n, next_seq, pad, put_new, s, sdk_err, to_json};
use crate::clock::{from_millis, to_millis};
use crate::domain::{JobId, Priority, QueueEntry, Requirements, TaskId, TenantId, WorkerId};
use crate::store::StoreError;

/// Entries per outbox item.
pub(super) const PER_ITEM: usize = 128;

/// A queue entry as stored.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    job_id: JobId,
    task_id: TaskId,
    tenant: TenantId,
    priority: Priority,
    gpu: bool,
    backend: Option<String>,
    model: Option<String>,
    worker_id: Option<WorkerId>,
    attempt: u32,
    max_attempts: u32,
    not_before_ms: i64,
}

impl From<&QueueEntry> for StoredEntry {
    fn from(e: &QueueEntry) -> Self {
        Self {
            job_id: e.job_id.clone(),
            task_id: e.task_id.clone(),
            tenant: e.tenant.clone(),
            priority: e.priority,
            gpu: e.requirements.gpu,
            backend: e.requirements.backend.clone(),
            model: e.requirements.model.clone(),
            worker_id: e.requirements.worker_id.clone(),
            attempt: e.attempt,
            max_attempts: e.max_attempts,
            not_before_ms: to_millis(e.not_before),
        }
    }
}

impl From<StoredEntry> for QueueEntry {
    fn from(e: StoredEntry) -> Self {
        Self {
            job_id: e.job_id,
            task_id: e.task_id,
            tenant: e.tenant,
            priority: e.priority,
            requirements: Requirements {
                gpu: e.gpu,
                backend: e.backend,
                model: e.model,
                worker_id: e.worker_id,
            },
            attempt: e.attempt,
            max_attempts: e.max_attempts,
            not_before: from_millis(e.not_before_ms),
        }
    }
}

/// The transaction items that put `entries` in the outbox, in order: one new item per
/// [`PER_ITEM`] entries.
pub(super) fn writes(
    db: &DynamoDb,
    entries: &[QueueEntry],
) -> Result<Vec<TransactWriteItem>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let chunks: Vec<&[QueueEntry]> = entries.chunks(PER_ITEM).collect();
    let first = next_seq(chunks.len() as u64);
    let mut out = Vec::with_capacity(chunks.len());
    for (k, chunk) in (first..).zip(chunks) {
        let stored: Vec<StoredEntry> = chunk.iter().map(StoredEntry::from).collect();
        let mut item = key("OUTBOX", pad(k));
        item.insert("entries".into(), s(to_json(&stored)?));
        item.insert("count".into(), n(chunk.len()));
        out.push(put_new(db, item)?);
    }
    Ok(out)
}

/// The indexes of an item's entries already dispatched.
fn done_of(item: &Item) -> Result<HashSet<i64>, StoreError> {
    match item.get("done") {
        None => Ok(HashSet::new()),
        Some(AttributeValue::Ns(v)) => v
            .iter()
            .map(|x| {
                x.parse()
                    .map_err(|_| StoreError::Corrupt(format!("outbox done index `{x}`")))
            })
            .collect(),
        Some(_) => Err(StoreError::Corrupt(
            "outbox `done` is not a number set".into(),
        )),
    }
}

/// The oldest undispatched entries with their ids.
pub(super) async fn pending(
    db: &DynamoDb,
    limit: usize,
) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
    let mut out = Vec::new();
    let mut start = None;
    while out.len() < limit {
        let page = db
            .client
            .query()
            .table_name(&db.table)
            .key_condition_expression("#pk = :o")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":o", s("OUTBOX"))
            .consistent_read(true)
            .limit(i32::try_from(limit.div_ceil(PER_ITEM).max(1)).unwrap_or(100))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        for item in page.items() {
            let k: i64 = get_s(item, "sk")?
                .parse()
                .map_err(|_| StoreError::Corrupt("outbox sort key".into()))?;
            let done = done_of(item)?;
            let entries: Vec<StoredEntry> = json(item, "entries")?;
            for (i, e) in (0i64..).zip(entries) {
                if out.len() == limit {
                    break;
                }
                if !done.contains(&i) {
                    out.push((k * PER_ITEM as i64 + i, e.into()));
                }
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    Ok(out)
}

/// Marks entries dispatched: their indexes join the item's `done` set, and an item whose
/// entries are all done is deleted. The usual case, a whole item marked at once, is one
/// conditional delete.
pub(super) async fn mark(db: &DynamoDb, ids: &[i64]) -> Result<(), StoreError> {
    let mut by_item: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for id in ids {
        by_item
            .entry(id.div_euclid(PER_ITEM as i64))
            .or_default()
            .insert(id.rem_euclid(PER_ITEM as i64).to_string());
    }
    for (k, indexes) in by_item {
        let whole = db
            .client
            .delete_item()
            .table_name(&db.table)
            .set_key(Some(key("OUTBOX", pad(k))))
            .condition_expression("attribute_not_exists(#d) AND #c = :n")
            .expression_attribute_names("#d", "done")
            .expression_attribute_names("#c", "count")
            .expression_attribute_values(":n", n(indexes.len()))
            .send()
            .await;
        match whole {
            Ok(_) => continue,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
            Err(e) => return Err(sdk_err(db, "delete_item", e)),
        }
        let indexes: Vec<String> = indexes.into_iter().collect();
        let out = db
            .client
            .update_item()
            .table_name(&db.table)
            .set_key(Some(key("OUTBOX", pad(k))))
            .update_expression("ADD #d :i")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#d", "done")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":i", AttributeValue::Ns(indexes))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match out {
            Ok(o) => o.attributes().cloned().unwrap_or_default(),
            // Already deleted: everything in it was dispatched.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                continue;
            }
            Err(e) => return Err(sdk_err(db, "update_item", e)),
        };
        let count: usize = get_n(&item, "count")?;
        if done_of(&item)?.len() >= count {
            db.client
                .delete_item()
                .table_name(&db.table)
                .set_key(Some(key("OUTBOX", pad(k))))
                .send()
                .await
                .map_err(|e| sdk_err(db, "delete_item", e))?;
        }
    }
    Ok(())
}
