//! Retention: terminal jobs past their time, found through the finished-jobs partition of
//! `gsi5` (`DONE` / `<finished_ms>#<job>`, set on a job item once it is terminal) and deleted
//! with their items. No scan: each step is a key or index query.
//!
//! Per job: the job partition (the job item and its idempotency link) is read consistently,
//! its deliveries are read from `gsi1` (`HOOKS#<job>`), and a job with a pending delivery is
//! kept. The chunks and deliveries go first (`BatchWriteItem`), then one transaction deletes
//! the job item on condition that its version is the one read, with its idempotency claim and
//! link: a job changed in between (a retry reopening it) is kept, and at worst has lost the
//! chunks and delivery log of its old run. Entries of pruned jobs still in the outbox are marked
//! done in one pass over the `OUTBOX` partition.

use aws_sdk_dynamodb::types::{Delete, DeleteRequest, TransactWriteItem, WriteRequest};

use super::DynamoDb;
use super::item::{Item, TxOutcome, get_s, json, key, n, pad, query_all, s, sdk_err, transact};
use super::jobs::{IDEM_LINK, decode};
use crate::domain::{DeliveryState, JobId, TaskRef, WebhookDelivery};
use crate::store::StoreError;

/// The partition key of finished jobs in `gsi5`.
pub(super) const DONE: &str = "DONE";

/// Items `BatchWriteItem` takes at once.
const BATCH: usize = 25;

/// [`JobStore::prune_finished`](crate::store::JobStore::prune_finished).
pub(super) async fn prune_finished(
    db: &DynamoDb,
    before_ms: i64,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let mut pruned = Vec::new();
    let mut start = None;
    while pruned.len() < limit {
        let page = db
            .client
            .query()
            .table_name(&db.table)
            .index_name("gsi5")
            .key_condition_expression("#pk = :done AND #sk < :before")
            .expression_attribute_names("#pk", "gsi5pk")
            .expression_attribute_names("#sk", "gsi5sk")
            .expression_attribute_values(":done", s(DONE))
            .expression_attribute_values(":before", s(pad(before_ms)))
            .projection_expression("gsi5sk")
            .limit(i32::try_from(limit.clamp(1, 100)).unwrap_or(100))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        for item in page.items() {
            let sk = get_s(item, "gsi5sk")?;
            let id = sk
                .split_once('#')
                .and_then(|(_, id)| JobId::parse(id).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("gsi5sk `{sk}`")))?;
            if pruned.len() < limit && prune_one(db, &id, before_ms).await? {
                pruned.push(id);
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    forget_outbox_entries(db, &pruned).await?;
    Ok(pruned)
}

/// Entries of the outbox looked through for pruned jobs' leftovers: the outbox is drained
/// after every change, so it holds a handful unless the queue is down.
const OUTBOX_LOOK: usize = 1_000;

/// Marks done whatever the outbox still holds for `pruned` (one query of the `OUTBOX`
/// partition, not per job).
async fn forget_outbox_entries(db: &DynamoDb, pruned: &[JobId]) -> Result<(), StoreError> {
    if pruned.is_empty() {
        return Ok(());
    }
    let left: Vec<i64> = super::outbox::pending(db, OUTBOX_LOOK)
        .await?
        .into_iter()
        .filter(|(_, e)| pruned.contains(&e.job_id))
        .map(|(id, _)| id)
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    super::outbox::mark(db, &left).await
}

/// Deletes one candidate if it is still terminal, finished before the cut-off and owes no
/// delivery; `false` when it was kept.
async fn prune_one(db: &DynamoDb, id: &JobId, before_ms: i64) -> Result<bool, StoreError> {
    let items = query_all(db, |q| {
        q.key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_values(":pk", s(format!("JOB#{id}")))
            .consistent_read(true)
    })
    .await?;
    let Some(job_item) = items
        .iter()
        .find(|i| get_s(i, "sk").is_ok_and(|k| k == "JOB"))
    else {
        return Ok(false);
    };
    let stored = decode(job_item)?;
    let job = &stored.record.job;
    let finished = job.finished_at.map(crate::clock::to_millis);
    if !job.status.is_terminal() || finished.is_none_or(|f| f >= before_ms) {
        return Ok(false);
    }
    let hooks = query_all(db, |q| {
        q.index_name("gsi1")
            .key_condition_expression("#pk = :j")
            .expression_attribute_names("#pk", "gsi1pk")
            .expression_attribute_values(":j", s(format!("HOOKS#{id}")))
    })
    .await?;
    let mut doomed = Vec::new();
    for h in &hooks {
        let d: WebhookDelivery = json(h, "body")?;
        if get_s(h, "state")? == DeliveryState::Pending.as_str() {
            return Ok(false);
        }
        doomed.push(key(format!("HOOK#{}", d.delivery_id), "HOOK"));
    }
    for t in &stored.record.tasks {
        let task = TaskRef {
            job_id: id.clone(),
            task_id: t.task_id.clone(),
        };
        let chunks = query_all(db, |q| {
            q.key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_values(":pk", s(super::chunks::partition(&task)))
                .projection_expression("pk, sk")
        })
        .await?;
        doomed.extend(chunks);
    }
    delete_batches(db, doomed).await?;
    delete_job(db, id, stored.version, &items).await
}

/// The job item (at `version`), its idempotency link and the claim it names, in one
/// transaction.
async fn delete_job(
    db: &DynamoDb,
    id: &JobId,
    version: i64,
    partition: &[Item],
) -> Result<bool, StoreError> {
    let mut writes = vec![delete(db, super::jobs::job_key(id), Some(version))?];
    for link in partition
        .iter()
        .filter(|i| get_s(i, "sk").is_ok_and(|k| k == IDEM_LINK))
    {
        let (tenant, k) = (get_s(link, "tenant")?, get_s(link, "idem_key")?);
        writes.push(delete(db, key(format!("JOB#{id}"), IDEM_LINK), None)?);
        writes.push(delete(
            db,
            key(format!("IDEM#{tenant}"), format!("KEY#{k}")),
            None,
        )?);
    }
    // A conflict or a changed version: the job stays for a later pass.
    Ok(matches!(
        transact(db, "prune_finished", writes).await?,
        TxOutcome::Done
    ))
}

fn delete(db: &DynamoDb, key: Item, version: Option<i64>) -> Result<TransactWriteItem, StoreError> {
    let mut d = Delete::builder().table_name(&db.table).set_key(Some(key));
    if let Some(v) = version {
        d = d
            .condition_expression("#ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_values(":v", n(v));
    }
    let d = d.build().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(TransactWriteItem::builder().delete(d).build())
}

/// Deletes items by key (only `pk` and `sk` of each are used), 25 at a time, sending again
/// whatever DynamoDB left unprocessed.
async fn delete_batches(db: &DynamoDb, items: Vec<Item>) -> Result<(), StoreError> {
    let mut requests = Vec::with_capacity(items.len());
    for item in items {
        let k: Item = item
            .into_iter()
            .filter(|(name, _)| name == "pk" || name == "sk")
            .collect();
        let d = DeleteRequest::builder()
            .set_key(Some(k))
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        requests.push(WriteRequest::builder().delete_request(d).build());
    }
    let mut attempt = 0;
    while !requests.is_empty() {
        let rest = requests.split_off(requests.len().min(BATCH));
        let out = db
            .client
            .batch_write_item()
            .request_items(&db.table, requests)
            .send()
            .await
            .map_err(|e| sdk_err(db, "batch_write_item", e))?;
        requests = rest;
        if let Some(left) = out.unprocessed_items().and_then(|u| u.get(&db.table)) {
            attempt += 1;
            if attempt > super::item::ATTEMPTS {
                return Err(StoreError::Unavailable(
                    "dynamodb prune_finished: deletes left unprocessed; try again".into(),
                ));
            }
            super::item::pause(attempt).await;
            requests.extend(left.iter().cloned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::store::dynamodb::tests::store;
    use crate::testing::retention as contract;

    #[tokio::test]
    async fn prunes_old_terminal_jobs_with_their_rows() {
        let Some(s) = store("ddb prune_old_terminal_jobs").await else {
            return;
        };
        contract::prunes_old_terminal_jobs_with_their_rows(&s).await;
    }

    #[tokio::test]
    async fn keeps_open_recent_and_undelivered_jobs() {
        let Some(s) = store("ddb prune_keeps_open_recent").await else {
            return;
        };
        contract::keeps_open_recent_and_undelivered_jobs(&s).await;
    }

    #[tokio::test]
    async fn honours_the_limit_and_repeats_harmlessly() {
        let Some(s) = store("ddb prune_honours_limit").await else {
            return;
        };
        contract::honours_the_limit_and_repeats_harmlessly(&s).await;
    }
}
