//! The SQLite database file: connections, pragmas, migrations and error mapping.
//!
//! SQLite runs in this process, so a statement costs microseconds; what made the old async
//! driver slow was handing every statement to a driver thread and waking the caller again
//! (about 70 µs a statement, most of the server's CPU in futex wake-ups). Here a transaction
//! runs synchronously, start to commit, on the task that asked for it: writers queue on an
//! async mutex for the one writer connection, and readers take a connection from a small pool.
//! Neither ever awaits while holding a connection, so a cancelled request cannot leave a
//! transaction half done.
//!
//! Statements are prepared once and cached, and must stay so: a statement whose plan uses the
//! value of a bound parameter is marked expired whenever that parameter is bound again, and
//! SQLite then parses and plans it anew on its next step. A bare `LIMIT ?` (or `OFFSET ?`) is
//! such a parameter (every claim was re-prepared, about a tenth of the server's time under a
//! trickle of jobs), so limits are written `LIMIT (SELECT ?n)`, which SQLite evaluates when
//! the statement runs. The store's and the queue's `statements_are_not_prepared_again` hold
//! every statement with a limit, and the claim and enqueue, to this.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction};
use sha2::{Digest, Sha256};

use super::writer::Writer;
use crate::queue::QueueError;
use crate::store::StoreError;

/// Migrations in order: (version, name, SQL). The SQL is compiled in, so a binary always
/// carries the schema it was built against.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "0002_drop_unused_task_lease_index",
        include_str!("../../../../migrations/sqlite/0002_drop_unused_task_lease_index.sql"),
    ),
    (
        3,
        "0003_queue_partial_indexes",
        include_str!("../../../../migrations/sqlite/0003_queue_partial_indexes.sql"),
    ),
    (
        4,
        "0004_tasks_rowid_table",
        include_str!("../../../../migrations/sqlite/0004_tasks_rowid_table.sql"),
    ),
    (
        5,
        "0005_audit_events",
        include_str!("../../../../migrations/sqlite/0005_audit_events.sql"),
    ),
    (
        6,
        "0006_webhook_deliveries",
        include_str!("../../../../migrations/sqlite/0006_webhook_deliveries.sql"),
    ),
    (
        7,
        "0007_task_chunks",
        include_str!("../../../../migrations/sqlite/0007_task_chunks.sql"),
    ),
    (
        8,
        "0008_run_locks",
        include_str!("../../../../migrations/sqlite/0008_run_locks.sql"),
    ),
    (
        9,
        "0009_job_retention",
        include_str!("../../../../migrations/sqlite/0009_job_retention.sql"),
    ),
    (
        10,
        "0010_drop_queue_lease_index",
        include_str!("../../../../migrations/sqlite/0010_drop_queue_lease_index.sql"),
    ),
];

/// Reader connections kept open between reads. Readers never block the writer in WAL mode;
/// a read that finds none idle opens another and drops it afterwards.
const READERS: usize = 4;

/// How long a statement waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection; the hot paths use a few dozen texts.
const STATEMENT_CACHE: usize = 128;

/// One SQLite database file: one writer connection and a pool of readers. Cheap to clone:
/// the connections are shared.
#[derive(Clone)]
pub struct SqliteDb {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Stops the checkpointer when the last handle goes.
    _checkpointer: Checkpointer,
    /// SQLite has one writer at a time. A single writer connection serialises our writes on
    /// its mutex instead of in SQLite's lock, so a transaction never has to upgrade a read
    /// lock (the SQLITE_BUSY deadlock of deferred transactions), and BEGIN IMMEDIATE only
    /// ever waits for another process, under `busy_timeout`.
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteDb {
    /// Opens (creating it and its parent directories if needed) the database at `path` and
    /// applies pending migrations.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be created or opened; `Corrupt` when an applied
    /// migration differs from the one compiled in.
    pub async fn open(path: &Path) -> Result<SqliteDb, StoreError> {
        let db = Self::connect(path)?;
        let applied = db.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(path = %path.display(), ?applied, "applied sqlite migrations");
        }
        Ok(db)
    }

    /// Opens the writer connection without migrating.
    pub(crate) fn connect(path: &Path) -> Result<SqliteDb, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("create directory {}: {e}", dir.display()))
            })?;
        }
        let writer = open_writer(path).map_err(store_err)?;
        let checkpointer = Checkpointer::start(path).map_err(store_err)?;
        Ok(SqliteDb {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                _checkpointer: checkpointer,
                writer: Writer::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Applies the migrations that are not applied yet, each in its own transaction together
    /// with its `schema_migrations` row, and returns their names.
    ///
    /// # Errors
    /// `Corrupt` when an applied migration was edited since (its checksum differs);
    /// `Unavailable` when the database cannot be written.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.migrate_up_to(i64::MAX).await
    }

    /// Applies pending migrations up to version `last`.
    async fn migrate_up_to(&self, last: i64) -> Result<Vec<String>, StoreError> {
        self.write(|tx| {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version    INTEGER PRIMARY KEY,
                    name       TEXT NOT NULL,
                    checksum   TEXT NOT NULL,
                    applied_at TEXT NOT NULL
                )",
            )
        })
        .await
        .map_err(store_err)?;
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS.iter().take_while(|(v, _, _)| *v <= last) {
            let checksum = checksum(sql);
            // Checked inside the write transaction, so two processes opening the same new file
            // cannot both apply a migration.
            let outcome = self
                .write(|tx| {
                    let found: Option<String> = tx
                        .query_row(
                            "SELECT checksum FROM schema_migrations WHERE version = ?1",
                            [version],
                            |r| r.get(0),
                        )
                        .map(Some)
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })?;
                    match found {
                        Some(stored) => Ok(Some(stored == checksum)),
                        None => {
                            tx.execute_batch(sql)?;
                            tx.execute(
                                "INSERT INTO schema_migrations (version, name, checksum, applied_at)
                                 VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                                (version, name, &checksum),
                            )?;
                            Ok(None)
                        }
                    }
                })
                .await
                .map_err(store_err)?;
            match outcome {
                Some(true) => {}
                Some(false) => {
                    return Err(StoreError::Corrupt(format!(
                        "migration {name} was edited after it was applied"
                    )));
                }
                None => applied.push(name.to_owned()),
            }
        }
        Ok(applied)
    }

    /// Runs `f` atomically on the writer connection and returns once its work is committed;
    /// an error from `f` undoes all of it. Waits (asynchronously) for the writer, then runs
    /// `f` to the end without awaiting. Concurrent writes share commits (`writer.rs`).
    pub(crate) async fn write<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E> {
        self.inner.writer.write(f).await
    }

    /// Like [`SqliteDb::write`], with the writer's cache of job records (`cache.rs`).
    pub(crate) async fn write_cached<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Connection, &mut super::cache::Staged<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.inner.writer.write_cached(f).await
    }

    /// The writer's cached records of every job in `ids` as of its last commit, if it holds
    /// them all (`cache.rs`); read without waiting for the writer.
    pub(crate) fn committed_records(
        &self,
        ids: &[crate::domain::JobId],
    ) -> Option<foldhash::HashMap<crate::domain::JobId, std::sync::Arc<crate::domain::JobRecord>>>
    {
        self.inner.writer.committed_records(ids)
    }

    /// Commits the writer has made so far.
    #[cfg(test)]
    pub(crate) fn writer_commits(&self) -> u64 {
        self.inner.writer.commits()
    }

    /// Writers waiting for their first turn at the writer.
    #[cfg(test)]
    pub(crate) fn writers_queued(&self) -> usize {
        self.inner.writer.queued()
    }

    /// Runs `f` in a read transaction: one consistent snapshot across its statements, of
    /// what was committed when it started.
    pub(crate) fn read<T, E: From<rusqlite::Error>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let idle = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.inner.path)?,
        };
        let out = {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            out
        };
        let mut readers = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if readers.len() < READERS {
            readers.push(conn);
        }
        Ok(out)
    }

    /// Runs a trivial statement on a reader and on the writer.
    pub(crate) async fn ping(&self) -> rusqlite::Result<()> {
        self.read(|tx| tx.query_row("SELECT 1", [], |_| Ok(())))?;
        self.write(|tx| tx.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

/// The writer connection: switches the file to WAL (a persistent setting) before any reader
/// opens it.
fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open_with(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    // 16 KiB pages for a new file (an existing one keeps its size): a commit writes every
    // page it changed as a WAL frame, with two write(2) calls each, and a task's rows
    // change together in claim order, so larger pages carry the same bytes in a quarter of
    // the frames, over b-trees a level shallower (`splai bench`: about a fifth more tasks/s).
    // The price is paid by small transactions, which write whole 16 KiB frames: an idle
    // worker's pickup of a single job took about 0.15 ms longer. Must precede the switch to
    // WAL.
    conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE}"))?;
    // journal_mode answers with the mode it set.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(%mode, "sqlite refused WAL mode");
    }
    // An 8 MiB page cache (default 2 MiB) and memory-mapped reads keep the hot
    // jobs/tasks/queue pages out of read(2) as the file grows. Not larger: a commit that
    // split a b-tree page walks the whole cache's hash table (SQLite renumbers pages through
    // a temporary page number past the end of the file, and the commit then drops every
    // cached page past the end), and with 64 MiB that walk was 3 % of the server's time
    // under load, while the larger cache saved no reads. No checkpoints on commit:
    // copying the WAL back into the file (and its fsync) was half the cost of a commit, on
    // the one path every write waits for; the `Checkpointer` does it beside the writer.
    conn.execute_batch("PRAGMA cache_size = -8192; PRAGMA wal_autocheckpoint = 0;")?;
    Ok(conn)
}

/// The page size of a new database file, in bytes.
const PAGE_SIZE: u32 = 16384;

/// How often the checkpointer looks at the WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies the WAL back into the database file on a thread of its own, with PASSIVE
/// checkpoints: they never block the writer or readers, and SQLite starts the WAL over once
/// a checkpoint has caught up. Stops (after one last checkpoint) when dropped.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(CHECKPOINT_EVERY),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "sqlite checkpoint failed");
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A reader connection. Readers refuse writes, so a write routed to one fails loudly. They
/// keep SQLite's default 2 MiB cache: in WAL mode a reader drops its whole cache whenever
/// another connection has written since its last read, which under a steady write load is
/// every read, and dropping a large cache costs more than it saves.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = open_with(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA cache_size = -2000;")?;
    Ok(conn)
}

/// The settings every connection shares.
fn open_with(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL + NORMAL syncs the WAL at checkpoints rather than at every commit. A commit still
    // survives a crash of this process (the OS has the pages), which is the durability we
    // promise; a power loss may lose the last few transactions.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA mmap_size = 268435456;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// What kind of failure an engine error is, independent of the trait it crosses.
enum Failure {
    Conflict,
    NotFound,
    Unavailable,
    Corrupt,
}

fn classify(e: &rusqlite::Error) -> Failure {
    use rusqlite::ffi::ErrorCode;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation
                if matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                Failure::Conflict
            }
            // The database cannot serve us right now; a retry may work.
            ErrorCode::PermissionDenied
            | ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::OperationInterrupted
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::FileLockingProtocolFailed
            | ErrorCode::NoLargeFileSupport => Failure::Unavailable,
            _ => Failure::Corrupt,
        },
        rusqlite::Error::QueryReturnedNoRows => Failure::NotFound,
        _ => Failure::Corrupt,
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        store_err(e)
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        queue_err(e)
    }
}

/// Maps an engine error onto the store boundary.
pub(crate) fn store_err(e: rusqlite::Error) -> StoreError {
    let msg = e.to_string();
    match classify(&e) {
        Failure::Conflict => StoreError::Conflict(msg),
        Failure::NotFound => StoreError::NotFound(msg),
        Failure::Unavailable => StoreError::Unavailable(msg),
        Failure::Corrupt => StoreError::Corrupt(msg),
    }
}

/// Maps an engine error onto the queue boundary. The queue upserts, so a uniqueness conflict
/// means its own invariants broke: that is corruption, not something a caller can resolve.
pub(crate) fn queue_err(e: rusqlite::Error) -> QueueError {
    let msg = e.to_string();
    match classify(&e) {
        Failure::Unavailable => QueueError::Unavailable(msg),
        Failure::Conflict | Failure::NotFound | Failure::Corrupt => QueueError::Corrupt(msg),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every file in migrations/sqlite is compiled in, under its file name, in version order.
    #[test]
    fn every_migration_file_is_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/sqlite");
        let files: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| f.strip_suffix(".sql").map(str::to_owned))
            .collect();
        let listed: BTreeSet<String> = MIGRATIONS.iter().map(|(_, n, _)| (*n).to_owned()).collect();
        assert_eq!(files, listed);
        for (i, &(version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(version, i as i64 + 1, "versions are consecutive from 1");
            assert!(
                name.starts_with(&format!("{version:04}_")),
                "{name} starts with its version"
            );
            let on_disk = std::fs::read_to_string(dir.join(format!("{name}.sql"))).unwrap();
            assert_eq!(sql, on_disk, "{name} is the file's content");
        }
    }

    /// A second migrate, and a reopen, apply nothing.
    #[tokio::test]
    async fn migrations_are_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/splai.db");
        let db = SqliteDb::connect(&path).unwrap();
        let all: Vec<String> = MIGRATIONS
            .iter()
            .map(|(_, name, _)| (*name).to_owned())
            .collect();
        assert_eq!(db.migrate().await.unwrap(), all);
        assert!(db.migrate().await.unwrap().is_empty());
        drop(db);
        let db = SqliteDb::open(&path).await.unwrap();
        assert!(db.migrate().await.unwrap().is_empty());
    }

    /// Rebuilding the queue table (0003) keeps every entry as it was, and a `seq` handed out
    /// before the rebuild is never handed out again.
    #[tokio::test]
    async fn queue_rebuild_keeps_entries_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect(&dir.path().join("splai.db")).unwrap();
        db.migrate_up_to(2).await.unwrap();
        db.write(|tx| {
            for (seq, state, lease) in [
                (1, "pending", None),
                (2, "leased", Some("l-2")),
                (3, "dead", None),
            ] {
                tx.execute(
                    "INSERT INTO queue_entries (seq, job_id, task_id, tenant, priority_rank,
                         requires_gpu, attempt, max_attempts, not_before_ms, state, lease_id)
                     VALUES (?1, 'j', ?1, 't', 1, 0, 1, 3, 0, ?2, ?3)",
                    (seq, state, lease),
                )?;
            }
            tx.execute("DELETE FROM queue_entries WHERE seq = 3", [])
        })
        .await
        .unwrap();
        db.migrate_up_to(3).await.unwrap();
        let kept = db
            .read(|tx| {
                let mut st =
                    tx.prepare("SELECT seq, state, lease_id FROM queue_entries ORDER BY seq")?;
                st.query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap();
        assert_eq!(
            kept,
            [
                (1, "pending".into(), None),
                (2, "leased".into(), Some("l-2".into()))
            ]
        );
        let next: i64 = db
            .write(|tx| {
                tx.query_row(
                    "INSERT INTO queue_entries (job_id, task_id, tenant, priority_rank,
                         requires_gpu, attempt, max_attempts, not_before_ms, state)
                     VALUES ('j', 'new', 't', 1, 0, 0, 3, 0, 'pending') RETURNING seq",
                    [],
                    |r| r.get(0),
                )
            })
            .await
            .unwrap();
        assert_eq!(next, 4, "seq 3 was used before the rebuild");
    }

    /// Rebuilding the tasks table (0004) keeps every task row, and its key stays unique.
    #[tokio::test]
    async fn tasks_rebuild_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::connect(&dir.path().join("splai.db")).unwrap();
        db.migrate_up_to(3).await.unwrap();
        db.write(|tx| {
            tx.execute(
                "INSERT INTO jobs (job_id, tenant, job_type, status, created_at_ms,
                     updated_at_ms, body) VALUES ('j', 't', 'chat', 'Running', 1, 2, '{}')",
                [],
            )?;
            for (task, position) in [("b", 1), ("a", 0)] {
                tx.execute(
                    "INSERT INTO tasks (job_id, task_id, position, status, worker_id, lease_id,
                         lease_expires_ms, body)
                     VALUES ('j', ?1, ?2, 'Running', 'w', 'l', 5, ?3)",
                    (task, position, format!("{{\"task\":\"{task}\"}}")),
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        // Later migrations follow; the rebuild is the next one applied.
        assert_eq!(
            db.migrate().await.unwrap()[..2],
            ["0004_tasks_rowid_table", "0005_audit_events"]
        );
        let rows = db
            .read(|tx| {
                tx.prepare(
                    "SELECT task_id, position, status, lease_expires_ms, body FROM tasks
                            WHERE job_id = 'j' ORDER BY position",
                )?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap();
        assert_eq!(
            rows,
            [
                ("a".into(), 0, "Running".into(), 5, r#"{"task":"a"}"#.into()),
                ("b".into(), 1, "Running".into(), 5, r#"{"task":"b"}"#.into()),
            ]
        );
        let again = db
            .write(|tx| {
                tx.execute(
                    "INSERT INTO tasks (job_id, task_id, position, status, body)
                     VALUES ('j', 'a', 2, 'Queued', '{}')",
                    [],
                )
            })
            .await;
        assert!(matches!(
            again.map_err(store_err),
            Err(StoreError::Conflict(_))
        ));
    }

    /// An applied migration whose recorded checksum no longer matches is reported by name.
    #[tokio::test]
    async fn edited_migration_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("splai.db");
        let db = SqliteDb::open(&path).await.unwrap();
        db.write(|tx| {
            tx.execute(
                "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
                [],
            )
        })
        .await
        .unwrap();
        drop(db);
        let err = SqliteDb::open(&path).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m == "migration 0001_init was edited after it was applied"),
            "{err:?}"
        );
    }

    /// The writer runs in WAL mode with NORMAL sync and enforces foreign keys; a new file has
    /// 16 KiB pages; readers refuse writes.
    #[tokio::test]
    async fn pragmas_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let pragmas = db
            .write(|tx| -> rusqlite::Result<_> {
                let one = |p: &str| tx.query_row(p, [], |r| r.get_ref(0)?.as_i64().or(Ok(-1)));
                let mode: String = tx.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                Ok((
                    mode,
                    one("PRAGMA synchronous")?,
                    one("PRAGMA foreign_keys")?,
                    one("PRAGMA page_size")?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(pragmas, ("wal".to_owned(), 1, 1, i64::from(PAGE_SIZE)));
        let write = db.read(|tx| tx.execute("DELETE FROM jobs", []));
        assert!(write.is_err(), "readers are query_only");
    }

    /// A failed write rolls back everything it did and leaves the writer usable.
    #[tokio::test]
    async fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let insert = "INSERT INTO idempotency_keys VALUES ('t', 'k', 'j', 'h', 0)";
        let err = db
            .write(|tx| {
                tx.execute(insert, [])?;
                tx.execute(insert, [])
            })
            .await
            .unwrap_err();
        assert!(matches!(classify(&err), Failure::Conflict), "{err}");
        let count = |db: &SqliteDb| {
            db.read(|tx| {
                tx.query_row("SELECT COUNT(*) FROM idempotency_keys", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .unwrap()
        };
        assert_eq!(count(&db), 0);
        db.write(|tx| tx.execute(insert, [])).await.unwrap();
        assert_eq!(count(&db), 1);
    }
}
