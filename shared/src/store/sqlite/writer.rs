//! The one writer connection, with group commit.
//!
//! Every write runs synchronously on the task that asked for it, inside a shared write
//! transaction: the write that opens it directly, every later one inside a savepoint of its
//! own, so that a failed write undoes only itself. A writer that finds others queued behind
//! it does not commit: it lets them add their work to the same transaction and queues up
//! again; whichever writer comes back to a still-open transaction commits it for everyone in
//! it. A writer that finds no one queued commits at once, so an idle database pays no latency
//! for this. Under load one commit (its WAL frames, its page writes) serves many requests.
//!
//! No caller sees `Ok` before the commit that holds its work: a reply is never sent for work
//! that a crash could still take back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rusqlite::Connection;

use super::cache::{Committed, RecordCache, Staged};
use crate::domain::JobRecord;

/// Most writes one transaction takes before it is committed even with writers queued, so
/// that a steady stream of writers cannot hold back a commit (and the replies it releases).
const MAX_GROUP: usize = 64;

/// How many failed commits are remembered for writers that have yet to come back for theirs.
const FAILURES_KEPT: u64 = 1024;

/// The writer connection and its group-commit state.
pub(super) struct Writer {
    state: tokio::sync::Mutex<State>,
    /// Writers waiting for their first turn: their work can still join an open transaction.
    queued: AtomicUsize,
    /// Commits so far, for tests.
    commits: AtomicU64,
    /// The cache's committed records, readable without the connection.
    committed: Committed,
}

struct State {
    conn: Connection,
    /// The number of the transaction that is or will be open next.
    group: u64,
    /// Whether `group` is open, and how many writes it holds.
    open: bool,
    writes: usize,
    /// Groups whose commit failed, with the error, for writers that come back to them.
    failed: BTreeMap<u64, String>,
    /// Job records as this connection's commits left them.
    cache: RecordCache,
}

/// Counts a writer as queued until it holds the connection (or gives up waiting).
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Writer {
        let cache = RecordCache::default();
        Writer {
            committed: cache.shared(),
            state: tokio::sync::Mutex::new(State {
                conn,
                group: 0,
                open: false,
                writes: 0,
                failed: BTreeMap::new(),
                cache,
            }),
            queued: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
        }
    }

    /// The records of every job in `ids` as of the last commit, if the cache holds them all;
    /// read without waiting for the connection.
    pub(super) fn committed_records(
        &self,
        ids: &[crate::domain::JobId],
    ) -> Option<foldhash::HashMap<crate::domain::JobId, Arc<JobRecord>>> {
        self.committed.all_of(ids)
    }

    /// Runs `f` atomically (an error from `f` undoes all of it, and only it) and returns
    /// once its work is committed.
    pub(super) async fn write<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_cached(|conn, _| f(conn)).await
    }

    /// Like [`Writer::write`], with the records cache: what `f` keeps there is kept only if
    /// `f` succeeds and its transaction commits.
    pub(super) async fn write_cached<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Connection, &mut Staged<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut state = {
            self.queued.fetch_add(1, Ordering::SeqCst);
            let _queued = Queued(&self.queued);
            self.state.lock().await
        };
        let opens = !state.open;
        if opens {
            // IMMEDIATE takes the write lock up front: a transaction that read first and then
            // found another process holding the lock could not wait for it.
            state.conn.execute_batch("BEGIN IMMEDIATE")?;
            state.open = true;
            state.writes = 0;
            let State { conn, cache, .. } = &mut *state;
            cache.begin(conn);
        }
        let group = state.group;
        let out = {
            let State { conn, cache, .. } = &mut *state;
            let mut staged = cache.stage();
            // The write that opens the transaction runs without a savepoint: the transaction
            // holds nothing else, so rolling it all back undoes exactly this write, and a
            // savepoint would first copy aside every page the write changes.
            let out = if opens {
                f(conn, &mut staged)
            } else {
                run_in_savepoint(conn, |c| f(c, &mut staged))
            };
            let changes = staged.into_changes();
            if out.is_ok() {
                cache.released(changes);
            }
            out
        };
        if opens && out.is_err() {
            state.roll_back();
            return out;
        }
        state.writes += 1;
        if self.queued.load(Ordering::SeqCst) == 0 || state.writes >= MAX_GROUP {
            self.commits.fetch_add(1, Ordering::Relaxed);
            let committed = state.commit();
            drop(state);
            // The displaced records are freed here, with the writer already free.
            committed?;
            return out;
        }
        // On an error there is nothing of ours to wait for; the writers behind us commit the
        // group.
        let value = out?;
        drop(state);
        // Writers queued behind us add their work; then whoever comes back first to the
        // still-open group commits it.
        let mut state = self.state.lock().await;
        if state.open && state.group == group {
            self.commits.fetch_add(1, Ordering::Relaxed);
            let committed = state.commit();
            drop(state);
            committed?;
        } else if let Some(e) = state.failed.get(&group) {
            return Err(commit_failed(e).into());
        }
        Ok(value)
    }
}

impl Writer {
    /// Commits attempted so far.
    #[cfg(test)]
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writers waiting for their first turn.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }
}

impl State {
    /// Rolls the open transaction back; it held only the failed write that opened it, so no
    /// other writer is waiting on its group.
    fn roll_back(&mut self) {
        // A failed ROLLBACK leaves nothing open that the next BEGIN would not report.
        let _ = self.conn.execute_batch("ROLLBACK");
        self.group += 1;
        self.open = false;
        self.cache.rolled_back();
    }

    /// Commits the open group; on failure rolls it back and remembers the error for its
    /// other writers. Returns the cached records the commit replaced, to be dropped once the
    /// connection is released.
    fn commit(&mut self) -> rusqlite::Result<Vec<Arc<JobRecord>>> {
        let group = self.group;
        self.group += 1;
        self.open = false;
        match self.conn.execute_batch("COMMIT") {
            Ok(()) => Ok(self.cache.committed()),
            Err(e) => {
                // A failed COMMIT may leave the transaction open; nothing of it may survive.
                let _ = self.conn.execute_batch("ROLLBACK");
                self.cache.rolled_back();
                self.failed.insert(group, e.to_string());
                self.failed = self.failed.split_off(&group.saturating_sub(FAILURES_KEPT));
                Err(e)
            }
        }
    }
}

/// Runs `f` inside a savepoint, released when it succeeds and rolled back when it fails.
fn run_in_savepoint<T, E: From<rusqlite::Error>>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, E>,
) -> Result<T, E> {
    conn.execute_batch("SAVEPOINT write")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE write")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO write; RELEASE write")?;
            Err(e)
        }
    }
}

/// The error a writer gets when the commit that held its work failed.
fn commit_failed(e: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(format!("commit failed: {e}")),
    )
}

/// Helpers for tests that need writers queued behind one another.
#[cfg(test)]
pub(super) mod test_support {
    use rusqlite::Connection;

    use super::Staged;
    use crate::store::sqlite::SqliteDb;

    /// Starts a write that holds the writer connection, so that writers started meanwhile
    /// queue up behind it, until `release` is sent; then it runs `f`. Returns once it holds
    /// the connection. Needs a multi-thread runtime: the held write blocks its thread.
    pub(in crate::store::sqlite) async fn holding_write<T: Send + 'static>(
        db: &SqliteDb,
        f: impl FnOnce(&Connection, &mut Staged<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> (
        tokio::task::JoinHandle<rusqlite::Result<T>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, has_started) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let db = db.clone();
        let write = tokio::spawn(async move {
            db.write_cached(move |c, cache| {
                started.send(()).unwrap();
                released.recv().unwrap();
                f(c, cache)
            })
            .await
        });
        has_started.await.unwrap();
        (write, release)
    }

    /// Waits until `n` writers are queued for the connection.
    pub(in crate::store::sqlite) async fn until_queued(db: &SqliteDb, n: usize) {
        while db.writers_queued() < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::test_support::{holding_write, until_queued};
    use crate::store::sqlite::SqliteDb;
    use crate::testing::records::a_record;

    /// Inserts an idempotency key `?1`: a row each write can add, or fail to add twice.
    const INSERT_KEY: &str = "INSERT INTO idempotency_keys VALUES ('t', ?1, 'j', 'h', 0)";

    /// A record kept by a write that then failed is not kept: the next write does not see it
    /// (and does see one kept by a write that succeeded).
    #[tokio::test]
    async fn a_failed_write_keeps_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let record = Arc::new(a_record("job-1", &["a"]));
        let kept = |db: &SqliteDb| {
            let db = db.clone();
            async move {
                db.write_cached(|_, cache| Ok::<_, rusqlite::Error>(cache.get("job-1").is_some()))
                    .await
                    .unwrap()
            }
        };
        let failed = db
            .write_cached(|_, cache| {
                cache.put(record.clone());
                Err::<(), _>(rusqlite::Error::InvalidQuery)
            })
            .await;
        assert!(failed.is_err());
        assert!(!kept(&db).await, "kept by a failed write");
        db.write_cached(|_, cache| {
            cache.put(record.clone());
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        assert!(kept(&db).await, "not kept by a successful write");
    }

    /// The write that opens a transaction runs without a savepoint: when it fails with
    /// writers queued behind it, it undoes exactly itself (its row and its cached record are
    /// gone) and the writers behind it commit theirs in a transaction of their own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_opening_write_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let keys = |db: &SqliteDb| -> Vec<String> {
            db.read(|tx| {
                tx.prepare("SELECT idem_key FROM idempotency_keys ORDER BY idem_key")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .unwrap()
        };
        let (opener, release) = holding_write(&db, |c, cache| {
            c.execute(INSERT_KEY, ["opener"])?;
            cache.put(Arc::new(a_record("job-1", &["a"])));
            // A duplicate key: the write fails after changing a row.
            c.execute(INSERT_KEY, ["opener"])
        })
        .await;
        let behind: Vec<_> = (0..3)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    db.write(move |c| c.execute(INSERT_KEY, [format!("k{i}")]))
                        .await
                })
            })
            .collect();
        until_queued(&db, 3).await;
        release.send(()).unwrap();
        assert!(opener.await.unwrap().is_err());
        for w in behind {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
        assert_eq!(keys(&db), ["k0", "k1", "k2"]);
        let kept = db
            .write_cached(|_, cache| Ok::<_, rusqlite::Error>(cache.get("job-1").is_some()))
            .await
            .unwrap();
        assert!(!kept, "kept by the failed opening write");
    }

    /// Many writers queued at once, some failing: each successful write is visible to a
    /// reader as soon as it returns (no `Ok` before its commit), each failed one left
    /// nothing, and they shared commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn queued_writes_share_commits_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let count = |db: &SqliteDb, key: &str| -> i64 {
            db.read(|tx| {
                tx.query_row(
                    "SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = ?1",
                    [key],
                    |r| r.get(0),
                )
            })
            .unwrap()
        };
        // A first writer holds the connection until every other writer is queued behind it.
        let (blocker, release) = holding_write(&db, |c, _| c.execute(INSERT_KEY, ["first"])).await;
        let before = db.writer_commits();
        let writers: Vec<_> = (0..400)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let key = format!("k{i}");
                    // Every fifth write inserts its row and then fails on a duplicate.
                    let fails = i % 5 == 0;
                    let out = db
                        .write(|c| {
                            c.execute(INSERT_KEY, [&key])?;
                            if fails {
                                c.execute(INSERT_KEY, [&key])?;
                            }
                            Ok::<_, rusqlite::Error>(())
                        })
                        .await;
                    assert_eq!(out.is_err(), fails, "{key}: {out:?}");
                    assert_eq!(count(&db, &key), i64::from(!fails), "{key}");
                })
            })
            .collect();
        until_queued(&db, 400).await;
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let commits = db.writer_commits() - before;
        // One group per MAX_GROUP writes, give or take the groups' boundaries.
        assert!(commits <= 20, "{commits} commits for 401 writes");
        let total: i64 = db
            .read(|tx| tx.query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(total, 321);
    }
}
