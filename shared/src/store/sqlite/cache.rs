//! The writer's cache of unfinished job records, as its own commits left them.
//!
//! Every change of a job loads its record, and parsing a job's and its tasks' JSON bodies was
//! about an eighth of the writer's time under load; the writer runs one transaction at a time,
//! so that time bounded throughput. Records the writer itself created or changed are kept
//! parsed, and a change starts from the kept copy.
//!
//! Kept copies are only trusted while no other connection has written: at the start of every
//! write transaction, `PRAGMA data_version` (which changes only when *another* connection
//! commits) is compared with its value at the last one, and everything is forgotten when it
//! moved (another `splai` process on the same file, `splai migrate`). A write's changes join
//! the cache only if the write succeeded, and only once the transaction holding them
//! committed; a rolled-back transaction leaves the cache as it was. Finished jobs are not kept:
//! nothing changes them on the hot path.
//!
//! The committed records can also be read without the writer ([`Committed`]), to prepare a
//! change ahead of its turn; such a change is written only if, under the writer, its records
//! are still the ones the transaction sees, so a copy gone stale meanwhile costs a redo, never
//! a lost change.

use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::HashMap;
use rusqlite::Connection;

use crate::domain::{JobId, JobRecord};

/// Most records kept; past it the cache starts over, refilling from the database.
const MAX_RECORDS: usize = 100_000;

/// The cache, owned by the writer connection's state.
#[derive(Default)]
pub(super) struct RecordCache {
    /// `PRAGMA data_version` when the committed records were last known to match the file.
    data_version: Option<i64>,
    /// Records as of the writer's last commit, by job id; changed only by the writer, and
    /// read without it through [`Committed`].
    committed: Committed,
    /// What the open transaction's successful writes changed (`None`: forget the job).
    group: HashMap<JobId, Option<Arc<JobRecord>>>,
}

/// One write's view of the cache: reads see its own changes, then the open transaction's,
/// then the committed records; its changes are kept only if the write succeeds.
pub(crate) struct Staged<'a> {
    cache: &'a RecordCache,
    changes: HashMap<JobId, Option<Arc<JobRecord>>>,
}

impl Staged<'_> {
    /// The job's record as this transaction sees it, if kept.
    pub(crate) fn get(&self, job_id: &str) -> Option<Arc<JobRecord>> {
        match self
            .changes
            .get(job_id)
            .or_else(|| self.cache.group.get(job_id))
        {
            Some(change) => change.clone(),
            None => self.cache.committed.lock().get(job_id).cloned(),
        }
    }

    /// Keeps `record`, exactly as this transaction wrote it (finished jobs are forgotten).
    pub(crate) fn put(&mut self, record: Arc<JobRecord>) {
        let id = record.job.job_id.clone();
        let keep = (!record.job.status.is_terminal()).then_some(record);
        self.changes.insert(id, keep);
    }

    /// Forgets the job: this transaction wrote it some other way.
    pub(crate) fn forget(&mut self, job_id: &JobId) {
        self.changes.insert(job_id.clone(), None);
    }

    /// The changes this write made, for [`RecordCache::released`].
    pub(super) fn into_changes(self) -> HashMap<JobId, Option<Arc<JobRecord>>> {
        self.changes
    }
}

impl RecordCache {
    /// At the start of a write transaction (holding the write lock): forgets every record
    /// when another connection has committed since the last check.
    pub(super) fn begin(&mut self, conn: &Connection) {
        self.group.clear();
        let version = conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .ok();
        if version.is_none() || version != self.data_version {
            self.committed.lock().clear();
        }
        self.data_version = version;
    }

    /// A view for one write.
    pub(super) fn stage(&self) -> Staged<'_> {
        Staged {
            cache: self,
            changes: HashMap::default(),
        }
    }

    /// A write succeeded: its changes join the open transaction's.
    pub(super) fn released(&mut self, changes: HashMap<JobId, Option<Arc<JobRecord>>>) {
        self.group.extend(changes);
    }

    /// The open transaction committed: its changes are now the file's. Returns the records
    /// they displaced, for the caller to drop once it has let go of the writer (freeing a
    /// job's tasks is work no other writer needs to wait for).
    pub(super) fn committed(&mut self) -> Vec<Arc<JobRecord>> {
        let mut displaced = Vec::with_capacity(self.group.len());
        let mut committed = self.committed.lock();
        for (id, change) in self.group.drain() {
            let old = match change {
                Some(record) => committed.insert(id, record),
                None => committed.remove(&id),
            };
            displaced.extend(old);
        }
        if committed.len() > MAX_RECORDS {
            displaced.extend(committed.drain().map(|(_, r)| r));
        }
        displaced
    }

    /// The committed records, for reading without the writer.
    pub(super) fn shared(&self) -> Committed {
        self.committed.clone()
    }

    /// The open transaction rolled back: none of its changes happened.
    pub(super) fn rolled_back(&mut self) {
        self.group.clear();
    }
}

/// The records as of the writer's last commit, shared with readers that do not hold the
/// writer: a change can be prepared from them ahead of its turn (`update::Prepared`), and is
/// written only if, by then, its records are still the transaction's.
#[derive(Clone, Default)]
pub(super) struct Committed(Arc<Mutex<HashMap<JobId, Arc<JobRecord>>>>);

impl Committed {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<JobRecord>>> {
        // The map is never left half-changed: a panic mid-update loses at most records.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed records of every job in `ids`, or `None` if any is not kept.
    pub(super) fn all_of(&self, ids: &[JobId]) -> Option<HashMap<JobId, Arc<JobRecord>>> {
        let committed = self.lock();
        let mut out = HashMap::with_capacity_and_hasher(ids.len(), Default::default());
        for id in ids {
            out.insert(id.clone(), committed.get(id)?.clone());
        }
        Some(out)
    }
}
