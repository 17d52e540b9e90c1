//! The SQLite database file: connection pools, pragmas, migrations and error mapping.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

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
];

/// Connections in the read pool. Readers never block the writer in WAL mode, so a few are
/// enough to serve list/get traffic while a write transaction is open.
const READERS: u32 = 4;

/// How long a statement waits for a lock held by another process before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One SQLite database file with its two pools. Cheap to clone: the pools are shared.
#[derive(Debug, Clone)]
pub struct SqliteDb {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteDb {
    /// Opens (creating it and its parent directories if needed) the database at `path` and
    /// applies pending migrations.
    ///
    /// # Errors
    /// `Unavailable` when the file cannot be created or opened; `Corrupt` when an applied
    /// migration differs from the one compiled in.
    pub async fn open(path: &Path) -> Result<SqliteDb, StoreError> {
        let db = Self::connect(path).await?;
        let applied = db.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(path = %path.display(), ?applied, "applied sqlite migrations");
        }
        Ok(db)
    }

    /// Opens the pools without migrating.
    pub(crate) async fn connect(path: &Path) -> Result<SqliteDb, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("create directory {}: {e}", dir.display()))
            })?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // WAL + NORMAL syncs the WAL at checkpoints rather than at every commit. A commit
            // still survives a crash of this process (the OS has the pages), which is the
            // durability we promise; a power loss may lose the last few transactions.
            .synchronous(SqliteSynchronous::Normal)
            // A 64 MiB page cache per connection (default 2 MiB) and memory-mapped reads keep
            // the hot jobs/tasks/queue pages out of read(2) as the file grows.
            .pragma("cache_size", "-65536")
            .pragma("mmap_size", "268435456")
            .pragma("temp_store", "memory");
        // SQLite has one writer at a time. A single writer connection serialises our writes
        // in the pool queue instead of in SQLite's lock, so a transaction never has to upgrade
        // a read lock (the SQLITE_BUSY deadlock of deferred transactions), and BEGIN IMMEDIATE
        // only ever waits for another process, under `busy_timeout`.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone().journal_mode(SqliteJournalMode::Wal))
            .await
            .map_err(store_err)?;
        // Created after the writer switched the file to WAL (a persistent setting). The
        // readers refuse writes, so a write routed to the wrong pool fails loudly.
        // Readers keep SQLite's default 2 MiB cache: in WAL mode a reader drops its whole
        // cache whenever another connection has written since its last read, which under a
        // steady write load is every read, and dropping a large cache costs more than it saves.
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(
                base.pragma("query_only", "ON")
                    .pragma("cache_size", "-2000"),
            )
            .await
            .map_err(store_err)?;
        Ok(SqliteDb { writer, reader })
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
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TEXT NOT NULL
            )",
        )
        .execute(&self.writer)
        .await
        .map_err(store_err)?;
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS.iter().take_while(|(v, _, _)| *v <= last) {
            // Checked inside the write transaction, so two processes opening the same new file
            // cannot both apply a migration.
            let mut tx = self.begin_write().await.map_err(store_err)?;
            let found: Option<String> =
                sqlx::query_scalar("SELECT checksum FROM schema_migrations WHERE version = ?1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_err)?;
            let checksum = checksum(sql);
            match found {
                Some(stored) if stored == checksum => continue,
                Some(_) => {
                    return Err(StoreError::Corrupt(format!(
                        "migration {name} was edited after it was applied"
                    )));
                }
                None => {}
            }
            sqlx::raw_sql(sql)
                .execute(&mut *tx)
                .await
                .map_err(store_err)?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at)
                 VALUES (?1, ?2, ?3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            )
            .bind(version)
            .bind(name)
            .bind(&checksum)
            .execute(&mut *tx)
            .await
            .map_err(store_err)?;
            tx.commit().await.map_err(store_err)?;
            applied.push(name.to_owned());
        }
        Ok(applied)
    }

    /// A write transaction on the single writer connection.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        // IMMEDIATE takes the write lock up front: a transaction that read first and then
        // found another process holding the lock could not wait for it.
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// A read transaction: one consistent snapshot across several statements.
    pub(crate) async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.reader.begin().await
    }

    /// The writer pool, for single-statement writes (each is its own transaction).
    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// The read pool, for single-statement reads.
    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Runs a trivial statement on both pools.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        sqlx::query("SELECT 1").execute(&self.writer).await?;
        Ok(())
    }
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

fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Failure::Conflict,
        sqlx::Error::Database(db) => {
            // Extended result codes carry the primary code in the low byte.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            match primary {
                // PERM, BUSY, LOCKED, NOMEM, READONLY, INTERRUPT, IOERR, FULL, CANTOPEN,
                // PROTOCOL, NOLFS: the database cannot serve us right now; a retry may work.
                Some(3 | 5 | 6 | 7 | 8 | 9 | 10 | 13 | 14 | 15 | 22) => Failure::Unavailable,
                _ => Failure::Corrupt,
            }
        }
        sqlx::Error::RowNotFound => Failure::NotFound,
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Encode(_) => Failure::Corrupt,
        _ => Failure::Unavailable,
    }
}

/// Maps an engine error onto the store boundary.
pub(crate) fn store_err(e: sqlx::Error) -> StoreError {
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
pub(crate) fn queue_err(e: sqlx::Error) -> QueueError {
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
        let db = SqliteDb::connect(&path).await.unwrap();
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
        let db = SqliteDb::connect(&dir.path().join("splai.db"))
            .await
            .unwrap();
        db.migrate_up_to(2).await.unwrap();
        for (seq, state, lease) in [
            (1, "pending", None),
            (2, "leased", Some("l-2")),
            (3, "dead", None),
        ] {
            sqlx::query(
                "INSERT INTO queue_entries (seq, job_id, task_id, tenant, priority_rank,
                     requires_gpu, attempt, max_attempts, not_before_ms, state, lease_id)
                 VALUES (?1, 'j', ?1, 't', 1, 0, 1, 3, 0, ?2, ?3)",
            )
            .bind(seq)
            .bind(state)
            .bind(lease)
            .execute(&db.writer)
            .await
            .unwrap();
        }
        sqlx::query("DELETE FROM queue_entries WHERE seq = 3")
            .execute(&db.writer)
            .await
            .unwrap();
        assert_eq!(db.migrate().await.unwrap().len(), MIGRATIONS.len() - 2);
        let kept: Vec<(i64, String, Option<String>)> =
            sqlx::query_as("SELECT seq, state, lease_id FROM queue_entries ORDER BY seq")
                .fetch_all(&db.writer)
                .await
                .unwrap();
        assert_eq!(
            kept,
            [
                (1, "pending".into(), None),
                (2, "leased".into(), Some("l-2".into()))
            ]
        );
        let next: i64 = sqlx::query_scalar(
            "INSERT INTO queue_entries (job_id, task_id, tenant, priority_rank, requires_gpu,
                 attempt, max_attempts, not_before_ms, state)
             VALUES ('j', 'new', 't', 1, 0, 0, 3, 0, 'pending') RETURNING seq",
        )
        .fetch_one(&db.writer)
        .await
        .unwrap();
        assert_eq!(next, 4, "seq 3 was used before the rebuild");
    }

    /// An applied migration whose recorded checksum no longer matches is reported by name.
    #[tokio::test]
    async fn edited_migration_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("splai.db");
        let db = SqliteDb::open(&path).await.unwrap();
        sqlx::query("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
            .execute(&db.writer)
            .await
            .unwrap();
        drop(db);
        let err = SqliteDb::open(&path).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m == "migration 0001_init was edited after it was applied"),
            "{err:?}"
        );
    }

    /// The writer runs in WAL mode with NORMAL sync and enforces foreign keys; readers refuse writes.
    #[tokio::test]
    async fn pragmas_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("splai.db")).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&db.writer)
            .await
            .unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&db.writer)
            .await
            .unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&db.writer)
            .await
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 1, 1));
        let write = sqlx::query("DELETE FROM jobs").execute(&db.reader).await;
        assert!(write.is_err(), "reader pool is query_only");
    }
}
