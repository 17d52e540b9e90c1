//! Streamed task output: one partition per task (`CHUNKS#<job>#<task>`), one item per chunk
//! keyed by `(lease, seq)` so a repeated append finds it, numbered from the partition's
//! counter item and read back in number order through the local index (strongly consistent,
//! so a reader never sees chunk 5 before chunk 4).

use aws_sdk_dynamodb::types::{ConditionCheck, Put, TransactWriteItem};

use super::DynamoDb;
use super::item::{
    ATTEMPTS, Item, TX_MAX_ITEMS, TxOutcome, get_n, get_s, key, n, opt_n, pad, pause, put_new,
    query_all, s, sdk_err, transact,
};
use super::jobs::job_key;
use super::table::LSI;
use crate::domain::{LeaseId, TaskChunk, TaskRef};
use crate::store::StoreError;

/// The partition of `task`'s chunks and their counter.
pub(super) fn partition(task: &TaskRef) -> String {
    format!("CHUNKS#{}#{}", task.job_id, task.task_id)
}

fn chunk_sk(lease: &LeaseId, seq: u32) -> String {
    format!("L#{lease}#{seq:010}")
}

/// Whether `lease` is the current lease of the running `task` (the job item's `leases` map).
async fn lease_current(db: &DynamoDb, task: &TaskRef, lease: &LeaseId) -> Result<bool, StoreError> {
    let out = db
        .client
        .get_item()
        .table_name(&db.table)
        .set_key(Some(job_key(&task.job_id)))
        .projection_expression("#ls.#t")
        .expression_attribute_names("#ls", "leases")
        .expression_attribute_names("#t", task.task_id.as_str())
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk_err(db, "get_item", e))?;
    let current = out
        .item()
        .and_then(|i| i.get("leases"))
        .and_then(|l| l.as_m().ok())
        .and_then(|m| m.get(task.task_id.as_str()))
        .and_then(|v| v.as_s().ok())
        .is_some_and(|l| l == lease.as_str());
    Ok(current)
}

/// [`JobStore::append_chunks`](crate::store::JobStore::append_chunks): each transaction checks
/// the lease on the job item, moves the counter from the value read and puts the new chunks.
pub(super) async fn append(
    db: &DynamoDb,
    task: &TaskRef,
    lease: &LeaseId,
    first_seq: u32,
    texts: &[String],
) -> Result<bool, StoreError> {
    let part = partition(task);
    let last_seq = first_seq.saturating_add(u32::try_from(texts.len()).unwrap_or(u32::MAX));
    for attempt in 1..=ATTEMPTS {
        let found = query_all(db, |q| {
            q.key_condition_expression("#pk = :p AND #sk BETWEEN :a AND :b")
                .projection_expression("#sq")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_names("#sq", "seq")
                .expression_attribute_values(":p", s(part.as_str()))
                .expression_attribute_values(":a", s(chunk_sk(lease, first_seq)))
                .expression_attribute_values(":b", s(chunk_sk(lease, last_seq)))
                .consistent_read(true)
        })
        .await?;
        let stored = found
            .iter()
            .map(|item| get_n::<u32>(item, "seq"))
            .collect::<Result<Vec<_>, _>>()?;
        let todo: Vec<(u32, &String)> = (first_seq..)
            .zip(texts)
            .filter(|(seq, _)| !stored.contains(seq))
            .take(TX_MAX_ITEMS - 2)
            .collect();
        if todo.is_empty() {
            return lease_current(db, task, lease).await;
        }
        let counter = db
            .client
            .get_item()
            .table_name(&db.table)
            .set_key(Some(key(part.as_str(), "NEXT")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err(db, "get_item", e))?;
        let last_id: Option<i64> = counter
            .item()
            .map(|i| opt_n(i, "last"))
            .transpose()?
            .flatten();
        let mut writes = vec![
            lease_check(db, task, lease)?,
            move_counter(db, &part, last_id, todo.len())?,
        ];
        for ((seq, text), id) in todo.iter().zip(last_id.unwrap_or(0) + 1..) {
            let mut item = key(part.as_str(), chunk_sk(lease, *seq));
            item.insert("lsi1sk".into(), s(pad(id)));
            item.insert("id".into(), n(id));
            item.insert("lease".into(), s(lease.as_str()));
            item.insert("seq".into(), n(*seq));
            item.insert("text".into(), s(text.as_str()));
            writes.push(put_new(db, item)?);
        }
        match transact(db, "append_chunks", writes).await? {
            TxOutcome::Done if todo.len() == texts.len() => return Ok(true),
            // More than one transaction holds: the next round writes the rest.
            TxOutcome::Done => {}
            TxOutcome::Failed(failed) if failed.contains(&0) => return Ok(false),
            TxOutcome::Failed(_) | TxOutcome::Busy => pause(attempt).await,
        }
    }
    Err(StoreError::Unavailable(format!(
        "dynamodb append_chunks: task {}/{} kept changing; try again",
        task.job_id, task.task_id
    )))
}

/// Checks, in the transaction, that `lease` is the running task's current lease.
fn lease_check(
    db: &DynamoDb,
    task: &TaskRef,
    lease: &LeaseId,
) -> Result<TransactWriteItem, StoreError> {
    let check = ConditionCheck::builder()
        .table_name(&db.table)
        .set_key(Some(job_key(&task.job_id)))
        .condition_expression("#ls.#t = :l")
        .expression_attribute_names("#ls", "leases")
        .expression_attribute_names("#t", task.task_id.as_str())
        .expression_attribute_values(":l", s(lease.as_str()))
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().condition_check(check).build())
}

/// Moves the partition's counter from `last` (as read) by `count`.
fn move_counter(
    db: &DynamoDb,
    part: &str,
    last: Option<i64>,
    count: usize,
) -> Result<TransactWriteItem, StoreError> {
    let mut item = key(part, "NEXT");
    item.insert("last".into(), n(last.unwrap_or(0) + count as i64));
    let put = Put::builder().table_name(&db.table).set_item(Some(item));
    let put = match last {
        None => put
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk"),
        Some(v) => put
            .condition_expression("#l = :l")
            .expression_attribute_names("#l", "last")
            .expression_attribute_values(":l", n(v)),
    };
    let put = put
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// [`JobStore::chunks_after`](crate::store::JobStore::chunks_after).
pub(super) async fn after(
    db: &DynamoDb,
    task: &TaskRef,
    after: i64,
    limit: usize,
) -> Result<Vec<TaskChunk>, StoreError> {
    let mut out = Vec::new();
    let mut start = None;
    while out.len() < limit {
        let page = db
            .client
            .query()
            .table_name(&db.table)
            .index_name(LSI)
            .key_condition_expression("#pk = :p AND #sk > :after")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#sk", "lsi1sk")
            .expression_attribute_values(":p", s(partition(task)))
            .expression_attribute_values(":after", s(pad(after)))
            .consistent_read(true)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        for item in page.items() {
            if out.len() < limit {
                out.push(decode(item)?);
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    Ok(out)
}

fn decode(item: &Item) -> Result<TaskChunk, StoreError> {
    Ok(TaskChunk {
        id: get_n(item, "id")?,
        lease_id: LeaseId::parse(get_s(item, "lease")?)
            .map_err(|e| StoreError::Corrupt(format!("chunk lease: {e}")))?,
        seq: get_n(item, "seq")?,
        text: get_s(item, "text")?.to_owned(),
    })
}
