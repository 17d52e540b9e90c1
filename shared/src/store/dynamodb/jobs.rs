//! The job item (the job and all its tasks, one item: see DESIGN.md) and the reads and
//! creates of jobs.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;

use super::DynamoDb;
use super::item::{
    ATTEMPTS, ITEM_MAX_BYTES, Item, TX_MAX_BYTES, TX_MAX_ITEMS, TxOutcome, get_n, get_s, json, key,
    n, next_seq, opt_s, pad, pause, put_new, s, sdk_err, size_of, to_json, transact,
};
use super::outbox;
use crate::clock::to_millis;
use crate::domain::{IdempotencyKey, Job, JobId, JobRecord, Status, Task, TenantId};
use crate::store::{
    CreateOutcome, IdempotencyClaim, JobFilter, JobPage, NewJobWrite, StoreError, TaskFilter,
    TaskPage,
};

/// A job record as stored: with the version its next write is conditioned on, and its listing
/// key (`<ordering number>#<job id>`, the sort key of the listing indexes and the cursor).
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) record: JobRecord,
    pub(super) version: i64,
    pub(super) seq: String,
    /// The token of the `update_jobs` attempt that wrote this version, if one did.
    pub(super) writer: Option<String>,
}

/// The attribute naming the `update_jobs` attempt that wrote a job item's version, so that
/// an attempt told its transaction failed can see that it committed after all.
pub(super) const WRITER: &str = "writer";

/// The key of a job's item.
pub(super) fn job_key(id: &JobId) -> Item {
    key(format!("JOB#{id}"), "JOB")
}

/// The sort key of a job's idempotency link: an item in the job's partition naming the claim
/// its submit made, so that retention can delete the claim with the job.
pub(super) const IDEM_LINK: &str = "IDEM";

/// The key of an idempotency claim's item.
fn idempotency_key(tenant: &TenantId, k: &IdempotencyKey) -> Item {
    key(format!("IDEM#{tenant}"), format!("KEY#{k}"))
}

/// When the reconciliation sweep should look at the job: the job's last change if a task is
/// queued, or the earliest lease deadline of a running task, whichever is earlier.
fn stale_ms(record: &JobRecord) -> Option<i64> {
    record
        .tasks
        .iter()
        .filter_map(|t| match t.status {
            Status::Queued => Some(to_millis(record.job.updated_at)),
            Status::Running => t.lease_expires.map(to_millis),
            _ => None,
        })
        .min()
}

/// The whole item of a job at `version`, with its index keys.
pub(super) fn job_item(record: &JobRecord, version: i64, seq: &str) -> Result<Item, StoreError> {
    let job = &record.job;
    let mut item = job_key(&job.job_id);
    let (tenant, status) = (job.tenant.as_str(), job.status.as_str());
    let mut put = |k: &str, v: AttributeValue| {
        item.insert(k.to_owned(), v);
    };
    put("body", s(to_json(job)?));
    put("tasks", s(to_json(&record.tasks)?));
    put("version", n(version));
    put("seq", s(seq));
    put("tenant", s(tenant));
    put("status", s(status));
    put("job_type", s(job.job_type.as_str()));
    put("gsi1pk", s("JOBS"));
    put("gsi1sk", s(seq));
    put("gsi2pk", s(format!("JT#{tenant}")));
    put("gsi2sk", s(seq));
    put("gsi3pk", s(format!("JS#{status}")));
    put("gsi3sk", s(seq));
    put("gsi4pk", s(format!("JTS#{tenant}#{status}")));
    put("gsi4sk", s(seq));
    if matches!(job.status, Status::Queued | Status::Running) {
        put("gsi5pk", s("OPEN"));
        put(
            "gsi5sk",
            s(format!("{}#{}", pad(to_millis(job.updated_at)), job.job_id)),
        );
    }
    // Finished jobs, oldest first, for retention (`prune.rs`); a reopened job leaves it.
    if let (true, Some(finished)) = (job.status.is_terminal(), job.finished_at) {
        put("gsi5pk", s(super::prune::DONE));
        put(
            "gsi5sk",
            s(format!("{}#{}", pad(to_millis(finished)), job.job_id)),
        );
    }
    if let Some(ms) = stale_ms(record) {
        put("stale_ms", n(ms));
    }
    // Current leases of running tasks, so that chunk appends can condition on them.
    let leases: HashMap<String, AttributeValue> = record
        .tasks
        .iter()
        .filter(|t| t.status == Status::Running)
        .filter_map(|t| Some((t.task_id.to_string(), s(t.lease_id.as_ref()?.as_str()))))
        .collect();
    if !leases.is_empty() {
        put("leases", AttributeValue::M(leases));
    }
    let size = size_of(&item);
    if size > ITEM_MAX_BYTES {
        return Err(StoreError::Conflict(format!(
            "job {} with its tasks is {size} bytes, over the {ITEM_MAX_BYTES} one DynamoDB item holds",
            job.job_id
        )));
    }
    Ok(item)
}

/// A stored job item, decoded.
pub(super) fn decode(item: &Item) -> Result<Stored, StoreError> {
    Ok(Stored {
        record: JobRecord {
            job: json(item, "body")?,
            tasks: json(item, "tasks")?,
        },
        version: get_n(item, "version")?,
        seq: get_s(item, "seq")?.to_owned(),
        writer: opt_s(item, WRITER)?.map(str::to_owned),
    })
}

/// A job's record as last committed (a strongly consistent read).
pub(super) async fn load(db: &DynamoDb, id: &JobId) -> Result<Option<Stored>, StoreError> {
    let out = db
        .client
        .get_item()
        .table_name(&db.table)
        .set_key(Some(job_key(id)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk_err(db, "get_item", e))?;
    out.item().map(decode).transpose()
}

/// The job alone (its tasks are not read).
pub(super) async fn get_job(db: &DynamoDb, id: &JobId) -> Result<Option<Job>, StoreError> {
    let out = db
        .client
        .get_item()
        .table_name(&db.table)
        .set_key(Some(job_key(id)))
        .projection_expression("#b")
        .expression_attribute_names("#b", "body")
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk_err(db, "get_item", e))?;
    out.item().map(|i| json(i, "body")).transpose()
}

/// The job and first request's hash a used idempotency key points at.
pub(super) async fn find_idempotency(
    db: &DynamoDb,
    tenant: &TenantId,
    k: &IdempotencyKey,
) -> Result<Option<(JobId, String)>, StoreError> {
    let out = db
        .client
        .get_item()
        .table_name(&db.table)
        .set_key(Some(idempotency_key(tenant, k)))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk_err(db, "get_item", e))?;
    let Some(item) = out.item() else {
        return Ok(None);
    };
    let job_id = JobId::parse(get_s(item, "job_id")?)
        .map_err(|e| StoreError::Corrupt(format!("idempotency job id: {e}")))?;
    Ok(Some((job_id, get_s(item, "request_hash")?.to_owned())))
}

/// What a transaction item of a create stands for, to read its failed condition.
enum Role {
    Job(usize),
    Claim(usize),
    Outbox,
}

/// Writes a batch of new jobs. The batch is one transaction when it fits DynamoDB's limits
/// (100 items, 4 MB); a larger batch is split into several, each all or none (DESIGN.md).
pub(super) async fn create(
    db: &DynamoDb,
    jobs: &[NewJobWrite<'_>],
) -> Result<Vec<CreateOutcome>, StoreError> {
    let mut outcomes = vec![CreateOutcome::Created; jobs.len()];
    // The first job of the batch to use each key; later ones replay whatever it gets.
    let mut first: HashMap<(&str, &str), usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(c) = j.idempotency {
            match first.entry((c.tenant.as_str(), c.key.as_str())) {
                std::collections::hash_map::Entry::Occupied(e) => repeats.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
    }
    let base = next_seq(jobs.len() as u64);
    let mut items = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        let seq = format!("{}#{}", pad(base + i as i64), j.record.job.job_id);
        items.push(job_item(j.record, 1, &seq)?);
    }
    let leaders: Vec<usize> = (0..jobs.len())
        .filter(|i| !repeats.iter().any(|(r, _)| r == i))
        .collect();
    // Group the jobs into transactions that fit.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
    let (mut count, mut bytes, mut entries) = (0usize, 0usize, 0usize);
    for &i in &leaders {
        let (c, b) = (
            1 + 2 * usize::from(jobs[i].idempotency.is_some()),
            size_of(&items[i]) + 1_000,
        );
        let e = jobs[i].ready.len();
        let outbox_items = (entries + e).div_ceil(outbox::PER_ITEM);
        let fits = count + c + outbox_items <= TX_MAX_ITEMS
            && bytes + b + (entries + e) * 400 <= TX_MAX_BYTES;
        if !fits && !groups.last().is_some_and(Vec::is_empty) {
            groups.push(Vec::new());
            (count, bytes, entries) = (0, 0, 0);
        }
        groups.last_mut().expect("one group at least").push(i);
        (count, bytes, entries) = (count + c, bytes + b, entries + e);
    }
    for group in groups {
        create_group(db, jobs, &items, &group, &mut outcomes).await?;
    }
    for (i, f) in repeats {
        outcomes[i] = match &outcomes[f] {
            CreateOutcome::Created => CreateOutcome::Replayed {
                job_id: jobs[f].record.job.job_id.clone(),
                request_hash: jobs[f]
                    .idempotency
                    .map(|c| c.request_hash.clone())
                    .unwrap_or_default(),
            },
            replayed => replayed.clone(),
        };
    }
    Ok(outcomes)
}

/// Writes one group of a batch in one transaction: the job items, their idempotency claims
/// and the outbox item(s) of their ready entries. A claim found taken turns its job into a
/// replay and the rest is tried again.
async fn create_group(
    db: &DynamoDb,
    jobs: &[NewJobWrite<'_>],
    items: &[Item],
    group: &[usize],
    outcomes: &mut [CreateOutcome],
) -> Result<(), StoreError> {
    for attempt in 1..=ATTEMPTS {
        let fresh: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| outcomes[i] == CreateOutcome::Created)
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let mut writes = Vec::new();
        let mut roles = Vec::new();
        for &i in &fresh {
            writes.push(put_new(db, items[i].clone())?);
            roles.push(Role::Job(i));
            if let Some(c) = jobs[i].idempotency {
                writes.push(put_new(db, claim_item(c, &jobs[i].record.job.job_id))?);
                roles.push(Role::Claim(i));
                // Its key is the job's partition, new with the job: it conflicts only when
                // the job item does.
                writes.push(put_new(db, link_item(c, &jobs[i].record.job.job_id))?);
                roles.push(Role::Job(i));
            }
        }
        let ready: Vec<_> = fresh
            .iter()
            .flat_map(|&i| jobs[i].ready.iter().cloned())
            .collect();
        for w in outbox::writes(db, &ready)? {
            writes.push(w);
            roles.push(Role::Outbox);
        }
        match transact(db, "create_jobs", writes).await? {
            TxOutcome::Done => return Ok(()),
            TxOutcome::Busy => {}
            TxOutcome::Failed(failed) => {
                for f in failed {
                    match roles.get(f) {
                        Some(Role::Job(i)) => {
                            return Err(StoreError::Conflict(if jobs.len() == 1 {
                                format!("job {} already exists", jobs[*i].record.job.job_id)
                            } else {
                                "a job id of the batch already exists".into()
                            }));
                        }
                        Some(Role::Claim(i)) => {
                            let c = jobs[*i].idempotency.expect("claims have a key");
                            // Taken by an earlier request: replay the job it created. (Gone
                            // again by now is impossible: a claim goes only with its job, long finished.)
                            if let Some((job_id, request_hash)) =
                                find_idempotency(db, &c.tenant, &c.key).await?
                            {
                                outcomes[*i] = CreateOutcome::Replayed {
                                    job_id,
                                    request_hash,
                                };
                            }
                        }
                        // An outbox key picked by another process at the same moment: the
                        // next attempt picks another.
                        Some(Role::Outbox) | None => {}
                    }
                }
            }
        }
        pause(attempt).await;
    }
    Err(StoreError::Unavailable(
        "dynamodb create_jobs: too much contention; try again".into(),
    ))
}

fn claim_item(c: &IdempotencyClaim, job_id: &JobId) -> Item {
    let mut item = idempotency_key(&c.tenant, &c.key);
    item.insert("job_id".into(), s(job_id.as_str()));
    item.insert("request_hash".into(), s(c.request_hash.as_str()));
    item
}

/// The job's link to its idempotency claim.
fn link_item(c: &IdempotencyClaim, job_id: &JobId) -> Item {
    let mut item = key(format!("JOB#{job_id}"), IDEM_LINK);
    item.insert("tenant".into(), s(c.tenant.as_str()));
    item.insert("idem_key".into(), s(c.key.as_str()));
    item
}

/// Checks a cursor is one this store handed out: `<20 digits>#<job id>`.
fn parse_cursor(c: &str) -> Result<&str, StoreError> {
    let ok = c.len() > 21
        && c.as_bytes()[..20].iter().all(u8::is_ascii_digit)
        && c.as_bytes()[20] == b'#'
        && JobId::parse(&c[21..]).is_ok();
    if ok {
        Ok(c)
    } else {
        Err(StoreError::NotFound(format!("cursor `{c}`")))
    }
}

/// A page of jobs, newest first, from the listing index that matches the filter's tenant and
/// status (the job type, when set, is filtered on the way).
pub(super) async fn list_jobs(db: &DynamoDb, filter: &JobFilter) -> Result<JobPage, StoreError> {
    let before = match &filter.cursor {
        Some(c) => parse_cursor(c)?.to_owned(),
        // Sorts after every `<digits>#..` key.
        None => "~".to_owned(),
    };
    let limit = filter.limit as usize;
    if limit == 0 {
        return Ok(JobPage {
            jobs: Vec::new(),
            next_cursor: None,
        });
    }
    let (index, pk) = match (&filter.tenant, filter.status) {
        (Some(t), Some(st)) => ("gsi4", format!("JTS#{t}#{}", st.as_str())),
        (Some(t), None) => ("gsi2", format!("JT#{t}")),
        (None, Some(st)) => ("gsi3", format!("JS#{}", st.as_str())),
        (None, None) => ("gsi1", "JOBS".to_owned()),
    };
    let mut query = db
        .client
        .query()
        .table_name(&db.table)
        .index_name(index)
        .key_condition_expression("#pk = :pk AND #sk < :before")
        .expression_attribute_names("#pk", format!("{index}pk"))
        .expression_attribute_names("#sk", format!("{index}sk"))
        .expression_attribute_values(":pk", s(pk))
        .expression_attribute_values(":before", s(before))
        .scan_index_forward(false)
        .limit(i32::try_from(limit.min(1000)).unwrap_or(1000));
    if let Some(ty) = &filter.job_type {
        query = query
            .filter_expression("#jt = :ty")
            .expression_attribute_names("#jt", "job_type")
            .expression_attribute_values(":ty", s(ty.as_str()));
    }
    let mut jobs = Vec::new();
    let mut last_seq = None;
    let mut start = None;
    loop {
        let out = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        for item in out.items() {
            if jobs.len() == limit {
                break;
            }
            jobs.push(json::<Job>(item, "body")?);
            last_seq = Some(get_s(item, &format!("{index}sk"))?.to_owned());
        }
        start = out.last_evaluated_key().cloned();
        if jobs.len() == limit || start.is_none() {
            break;
        }
    }
    // Only hand out a cursor when a further page may exist.
    let next_cursor = last_seq.filter(|_| jobs.len() == limit);
    Ok(JobPage { jobs, next_cursor })
}

/// A page of one job's tasks in planning order, with the count of all matches; the tasks
/// live in the job's item, so this is one read.
pub(super) async fn list_tasks(
    db: &DynamoDb,
    job_id: &JobId,
    filter: &TaskFilter,
) -> Result<TaskPage, StoreError> {
    let out = db
        .client
        .get_item()
        .table_name(&db.table)
        .set_key(Some(job_key(job_id)))
        .projection_expression("#t")
        .expression_attribute_names("#t", "tasks")
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| sdk_err(db, "get_item", e))?;
    let Some(item) = out.item() else {
        return Err(StoreError::NotFound(format!("job {job_id}")));
    };
    let tasks: Vec<Task> = json(item, "tasks")?;
    let matching: Vec<Task> = tasks
        .into_iter()
        .filter(|t| filter.status.is_none_or(|st| t.status == st))
        .filter(|t| {
            filter
                .worker_id
                .as_ref()
                .is_none_or(|w| t.worker_id.as_ref() == Some(w))
        })
        .collect();
    let total = matching.len() as u64;
    let limit = filter.limit.map_or(usize::MAX, |l| l as usize);
    Ok(TaskPage {
        total,
        tasks: matching
            .into_iter()
            .skip(filter.offset as usize)
            .take(limit)
            .collect(),
    })
}

/// Unfinished jobs, least recently changed first, whose `stale_ms` is before `before`: a walk
/// of the open-jobs index (only queued and running jobs are in it), which the sweep runs
/// rarely.
pub(super) async fn stale(
    db: &DynamoDb,
    before: i64,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let query = db
        .client
        .query()
        .table_name(&db.table)
        .index_name("gsi5")
        .key_condition_expression("#pk = :open")
        .expression_attribute_names("#pk", "gsi5pk")
        .filter_expression("#st < :before")
        .expression_attribute_names("#st", "stale_ms")
        .expression_attribute_values(":open", s("OPEN"))
        .expression_attribute_values(":before", n(before));
    // Sorted by (updated, job id): the index key.
    let mut found: BTreeMap<String, JobId> = BTreeMap::new();
    let mut start = None;
    loop {
        let out = query
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| sdk_err(db, "query", e))?;
        for item in out.items() {
            let job: Job = json(item, "body")?;
            found.insert(get_s(item, "gsi5sk")?.to_owned(), job.job_id);
        }
        start = out.last_evaluated_key().cloned();
        if found.len() >= limit || start.is_none() {
            break;
        }
    }
    Ok(found.into_values().take(limit).collect())
}
