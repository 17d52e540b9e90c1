//! DynamoDB store: jobs with their tasks, workers, the dispatch outbox, webhook deliveries,
//! streamed chunks and the audit log in one table (`SPLAI_DYNAMODB_TABLE`). The layout, the
//! access pattern of every operation and the limits are in `dynamodb/DESIGN.md`.
//!
//! A job and its tasks are one item, written whole on condition that its version is the one
//! read (optimistic concurrency: the loser of a race reloads and applies its rule again), in
//! one `TransactWriteItems` with the outbox and webhook items the change owes. DynamoDB has no
//! queue, so this store always dispatches through its outbox to an external queue.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;

pub use self::audit::DynamoAuditLog;
use super::{
    ApplyFn, CreateOutcome, DispatchOutbox, JobFilter, JobPage, JobStore, LeaseRenewal,
    NewJobWrite, StoreError, TaskFilter, TaskPage,
};
use crate::clock::to_millis;
use crate::domain::{
    IdempotencyKey, Job, JobId, JobRecord, LeaseId, QueueEntry, Status, TaskChunk, TaskRef,
    TenantId, Timestamp,
};

mod audit;
mod chunks;
mod item;
mod jobs;
mod locks;
mod outbox;
mod prune;
mod table;
#[cfg(test)]
mod tests;
mod update;
mod webhooks;
mod workers;

/// A client on the store's table, shared by [`DynamoStore`] and [`DynamoAuditLog`].
#[derive(Debug, Clone)]
pub struct DynamoDb {
    client: Client,
    table: String,
}

impl DynamoDb {
    /// A client on `table` built from the one SDK configuration. The table must exist (it is
    /// waited for while being created); with `create`, a missing table is created (on demand,
    /// with its indexes and TTL) instead of failing start-up.
    ///
    /// # Errors
    /// The table is missing (and not to be created) or DynamoDB cannot be reached; the
    /// message names the table and `SPLAI_DYNAMODB_TABLE`.
    pub async fn open(sdk: &SdkConfig, table: &str, create: bool) -> Result<Self, StoreError> {
        let client = Client::new(sdk);
        table::ensure(&client, table, create).await?;
        Ok(Self {
            client,
            table: table.to_owned(),
        })
    }

    /// The underlying client, for tests that reach behind the store.
    #[cfg(test)]
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

/// [`JobStore`], [`WorkerStore`](super::WorkerStore), [`DispatchOutbox`] and
/// [`WebhookOutbox`](super::WebhookOutbox) on a DynamoDB table.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    db: DynamoDb,
}

impl DynamoStore {
    /// A store on `db`'s table, dispatching through its outbox.
    pub fn new(db: DynamoDb) -> Self {
        Self { db }
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    #[tracing::instrument(skip_all, fields(jobs = jobs.len()))]
    async fn create_jobs(
        &self,
        jobs: &[NewJobWrite<'_>],
    ) -> Result<Vec<CreateOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        jobs::create(&self.db, jobs).await
    }

    async fn find_idempotency(
        &self,
        tenant: &TenantId,
        key: &IdempotencyKey,
    ) -> Result<Option<(JobId, String)>, StoreError> {
        jobs::find_idempotency(&self.db, tenant, key).await
    }

    async fn load_job(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(jobs::load(&self.db, id).await?.map(|s| s.record))
    }

    async fn get_job(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        jobs::get_job(&self.db, id).await
    }

    async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, StoreError> {
        jobs::list_jobs(&self.db, filter).await
    }

    async fn list_tasks(
        &self,
        job_id: &JobId,
        filter: &TaskFilter,
    ) -> Result<TaskPage, StoreError> {
        jobs::list_tasks(&self.db, job_id, filter).await
    }

    async fn update_jobs(&self, ids: &[JobId], apply: &mut ApplyFn<'_>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        update::update_jobs(&self.db, ids, apply).await
    }

    async fn renew_leases(
        &self,
        renewals: &[LeaseRenewal],
        until: Timestamp,
    ) -> Result<Vec<Option<Status>>, StoreError> {
        update::renew_leases(&self.db, renewals, until).await
    }

    async fn stale_jobs(&self, before: Timestamp, limit: usize) -> Result<Vec<JobId>, StoreError> {
        jobs::stale(&self.db, to_millis(before), limit).await
    }

    async fn prune_finished(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<JobId>, StoreError> {
        prune::prune_finished(&self.db, to_millis(before), limit).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .client
            .describe_table()
            .table_name(&self.db.table)
            .send()
            .await
            .map_err(|e| item::sdk_err(&self.db, "describe_table", e))?;
        Ok(())
    }

    async fn append_chunks(
        &self,
        task: &TaskRef,
        lease: &LeaseId,
        first_seq: u32,
        texts: &[String],
    ) -> Result<bool, StoreError> {
        chunks::append(&self.db, task, lease, first_seq, texts).await
    }

    async fn chunks_after(
        &self,
        task: &TaskRef,
        after: i64,
        limit: usize,
    ) -> Result<Vec<TaskChunk>, StoreError> {
        chunks::after(&self.db, task, after, limit).await
    }
}

#[async_trait]
impl DispatchOutbox for DynamoStore {
    async fn pending_dispatch(&self, limit: usize) -> Result<Vec<(i64, QueueEntry)>, StoreError> {
        outbox::pending(&self.db, limit).await
    }

    async fn mark_dispatched(&self, ids: &[i64]) -> Result<(), StoreError> {
        outbox::mark(&self.db, ids).await
    }
}
