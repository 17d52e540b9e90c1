//! Job updates: `update_jobs` and `renew_leases`, optimistic. Each job item carries a
//! version; a write is conditioned on the version it read, so a concurrent writer is never
//! overwritten: the loser reloads, applies the rule again to the fresh record, and retries.
//!
//! A transaction can commit and still be reported failed: the response is lost and the SDK's
//! retry of the same request then fails its version check against the write it made itself.
//! Each attempt therefore stamps its job items with a token of its own (`WRITER`), and a
//! reload that finds that token at the version it wrote counts the job as committed instead
//! of applying the rule a second time (which would find the change already made, and report
//! nothing changed: a completed job would go uncounted and its effects would be lost).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::TransactWriteItem;

use super::DynamoDb;
use super::item::{
    ATTEMPTS, TX_MAX_BYTES, TX_MAX_ITEMS, TxOutcome, check_at, n, pause, put_at, sdk_err, transact,
};
use super::jobs::{Stored, WRITER, job_item, job_key, load};
use super::{outbox, webhooks};
use crate::domain::{
    BeforeChange, JobId, JobRecord, QueueEntry, Status, Timestamp, owed_deliveries,
};
use crate::store::{ApplyFn, LeaseRenewal, StoreError};

/// One job's share of a commit: its write (or version check), its webhook deliveries, and
/// the entries its rule made ready, in apply order.
struct JobWrite {
    id: JobId,
    /// The version this write makes, when it puts the item (rather than only checking it).
    writes_version: Option<i64>,
    items: Vec<TransactWriteItem>,
    bytes: usize,
    entries: Vec<QueueEntry>,
}

/// Applies `apply` to each existing job among `ids` (a repeated id to the result of its
/// previous application) and commits each job's change with its entries and webhook
/// deliveries. The whole batch is one transaction when it fits DynamoDB's limits, else one
/// per job; a transaction that lost a race is applied again from freshly read records.
pub(super) async fn update_jobs(
    db: &DynamoDb,
    ids: &[JobId],
    apply: &mut ApplyFn<'_>,
) -> Result<(), StoreError> {
    let mut remaining: Vec<JobId> = ids.to_vec();
    // Per job whose transaction was reported lost: the version and token it tried to write.
    let mut tried: HashMap<JobId, (i64, String)> = HashMap::new();
    for attempt in 1..=ATTEMPTS {
        let token = uuid::Uuid::now_v7().to_string();
        let (writes, in_order) = prepare(db, &remaining, apply, &tried, &token).await?;
        let count: usize = writes.iter().map(|w| w.items.len()).sum();
        let entries: usize = writes.iter().map(|w| w.entries.len()).sum();
        let bytes: usize = writes.iter().map(|w| w.bytes).sum();
        let together = count + entries.div_ceil(outbox::PER_ITEM) <= TX_MAX_ITEMS
            && bytes + entries * 400 <= TX_MAX_BYTES;
        // One transaction keeps the batch's entries in apply order across jobs; one per job
        // keeps each job's.
        let groups: Vec<(Vec<JobWrite>, Vec<QueueEntry>)> = if together {
            vec![(writes, in_order)]
        } else {
            writes
                .into_iter()
                .map(|mut w| {
                    let entries = std::mem::take(&mut w.entries);
                    (vec![w], entries)
                })
                .collect()
        };
        let mut lost = Vec::new();
        for (group, ready) in groups {
            let ids: Vec<JobId> = group.iter().map(|w| w.id.clone()).collect();
            let versions: Vec<(JobId, i64)> = group
                .iter()
                .filter_map(|w| Some((w.id.clone(), w.writes_version?)))
                .collect();
            let mut items = Vec::new();
            for w in group {
                items.extend(w.items);
            }
            items.extend(outbox::writes(db, &ready)?);
            if items.len() > TX_MAX_ITEMS {
                return Err(StoreError::Conflict(format!(
                    "the change of job {} needs {} items, over the {TX_MAX_ITEMS} of one DynamoDB transaction",
                    ids[0],
                    items.len()
                )));
            }
            match transact(db, "update_jobs", items).await? {
                TxOutcome::Done => {}
                TxOutcome::Failed(_) | TxOutcome::Busy => {
                    for (id, version) in versions {
                        tried.insert(id, (version, token.clone()));
                    }
                    lost.extend(ids);
                }
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        // Committed jobs are done; the rest are applied again, in the batch's order.
        remaining.retain(|id| lost.contains(id));
        pause(attempt).await;
    }
    Err(StoreError::Unavailable(format!(
        "dynamodb update_jobs: jobs {remaining:?} kept changing under this update; try again"
    )))
}

/// Loads the jobs among `ids`, applies the rule and builds each changed job's writes (stamped
/// with `token`), in first-seen order, and returns them with every entry in apply order. A job
/// found as an earlier attempt in `tried` wrote it committed after all, and is left out.
async fn prepare(
    db: &DynamoDb,
    ids: &[JobId],
    apply: &mut ApplyFn<'_>,
    tried: &HashMap<JobId, (i64, String)>,
    token: &str,
) -> Result<(Vec<JobWrite>, Vec<QueueEntry>), StoreError> {
    let mut order: Vec<&JobId> = Vec::new();
    for id in ids {
        if !order.contains(&id) {
            order.push(id);
        }
    }
    let loaded = futures::future::try_join_all(order.iter().map(|id| load(db, id))).await?;
    let mut before: HashMap<&JobId, Stored> = HashMap::new();
    let mut after: HashMap<&JobId, JobRecord> = HashMap::new();
    for (id, stored) in order.iter().zip(loaded) {
        if let Some(stored) = stored {
            let ours = tried.get(*id).is_some_and(|(version, token)| {
                stored.version == *version && stored.writer.as_deref() == Some(token)
            });
            if ours {
                continue;
            }
            after.insert(*id, stored.record.clone());
            before.insert(*id, stored);
        }
    }
    let mut entries: HashMap<&JobId, Vec<QueueEntry>> = HashMap::new();
    let mut in_order = Vec::new();
    for id in ids {
        if let Some(record) = after.get_mut(id) {
            let ready = apply(record).enqueue;
            in_order.extend(ready.iter().cloned());
            entries.entry(id).or_default().extend(ready);
        }
    }
    let mut out = Vec::new();
    for id in order {
        let (Some(old), Some(new)) = (before.get(id), after.get(id)) else {
            continue;
        };
        let ready = entries.remove(id).unwrap_or_default();
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut writes_version = None;
        if *new != old.record {
            let mut item = job_item(new, old.version + 1, &old.seq)?;
            item.insert(WRITER.to_owned(), super::item::s(token));
            bytes += super::item::size_of(&item);
            items.push(put_at(db, item, old.version)?);
            writes_version = Some(old.version + 1);
        } else if !ready.is_empty() {
            // Unchanged, but its entries were derived from this version of it.
            items.push(check_at(db, job_key(id), old.version)?);
        } else {
            continue;
        }
        let owed = owed_deliveries(&BeforeChange::of(&old.record), new);
        bytes += owed.iter().map(|d| d.body.len() + 1_000).sum::<usize>();
        items.extend(webhooks::writes(db, &owed)?);
        out.push(JobWrite {
            id: id.clone(),
            writes_version,
            items,
            bytes,
            entries: ready,
        });
    }
    Ok((out, in_order))
}

/// Per renewal, the task's status if the renewal names its current lease (and then, while it
/// runs, its lease is extended to `until`), else `None`. One conditional write per job.
pub(super) async fn renew_leases(
    db: &DynamoDb,
    renewals: &[LeaseRenewal],
    until: Timestamp,
) -> Result<Vec<Option<Status>>, StoreError> {
    let mut by_job: HashMap<&JobId, Vec<usize>> = HashMap::new();
    for (i, r) in renewals.iter().enumerate() {
        by_job.entry(&r.task.job_id).or_default().push(i);
    }
    let mut out = vec![None; renewals.len()];
    let answers = futures::future::try_join_all(
        by_job
            .into_iter()
            .map(|(id, which)| renew_job(db, id, renewals, which, until)),
    )
    .await?;
    for (i, status) in answers.into_iter().flatten() {
        out[i] = status;
    }
    Ok(out)
}

/// The renewals `which` (indexes into `renewals`) of one job.
async fn renew_job(
    db: &DynamoDb,
    id: &JobId,
    renewals: &[LeaseRenewal],
    which: Vec<usize>,
    until: Timestamp,
) -> Result<Vec<(usize, Option<Status>)>, StoreError> {
    for attempt in 1..=ATTEMPTS {
        let Some(stored) = load(db, id).await? else {
            return Ok(which.iter().map(|&i| (i, None)).collect());
        };
        let mut record = stored.record.clone();
        let mut answers = Vec::new();
        for &i in &which {
            let r = &renewals[i];
            let status = record.task_mut(&r.task.task_id).and_then(|t| {
                if t.lease_id.as_ref() != Some(&r.lease_id) {
                    return None;
                }
                if t.status == Status::Running {
                    t.lease_expires = Some(until);
                }
                Some(t.status)
            });
            answers.push((i, status));
        }
        if record == stored.record {
            return Ok(answers);
        }
        let put = db
            .client
            .put_item()
            .table_name(&db.table)
            .set_item(Some(job_item(&record, stored.version + 1, &stored.seq)?))
            .condition_expression("#ver = :v")
            .expression_attribute_names("#ver", "version")
            .expression_attribute_values(":v", n(stored.version))
            .send()
            .await;
        match put {
            Ok(_) => return Ok(answers),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                pause(attempt).await;
            }
            Err(e) => return Err(sdk_err(db, "put_item", e)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "dynamodb renew_leases: job {id} kept changing; try again"
    )))
}
