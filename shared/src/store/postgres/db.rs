//! The Postgres database: the connection pool, migrations, error mapping and the retry of
//! transient failures.
//!
//! A [`PgDb`] is a pool of connections to one database. Store and queue operations are short
//! transactions (a few statements, batched over arrays); a transaction that fails because the
//! connection went away (a restart, `pg_terminate_backend`, a network reset), or because
//! Postgres chose it as a serialization or deadlock victim, is run again from the start on a
//! fresh connection, a few times with backoff, before the error reaches the caller. A failure
//! while committing is never retried: the commit may have happened.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};

use crate::queue::QueueError;
use crate::store::StoreError;

/// Migrations in order: (version, name, SQL). The SQL is compiled in, so a binary always
/// carries the schema it was built against.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init",
        include_str!("../../../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "0002_audit_events",
        include_str!("../../../../migrations/postgres/0002_audit_events.sql"),
    ),
    (
        3,
        "0003_webhook_deliveries",
        include_str!("../../../../migrations/postgres/0003_webhook_deliveries.sql"),
    ),
    (
        4,
        "0004_task_chunks",
        include_str!("../../../../migrations/postgres/0004_task_chunks.sql"),
    ),
    (
        5,
        "0005_run_locks",
        include_str!("../../../../migrations/postgres/0005_run_locks.sql"),
    ),
    (
        6,
        "0006_job_retention",
        include_str!("../../../../migrations/postgres/0006_job_retention.sql"),
    ),
];

/// The advisory lock key migrations take, so that two processes starting together do not both
/// migrate (`'splai'` as a number; any constant that no other code uses would do).
const MIGRATION_LOCK: i64 = 0x0073_706c_6169;

/// How long an operation waits for a pooled connection before calling the store unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts of an operation whose connection failed, the first included.
const ATTEMPTS: u32 = 4;

/// The default pool size (`SPLAI_POSTGRES_MAX_CONNECTIONS`).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How long after a lost connection every pooled connection is checked before use.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// A pool of connections to one Postgres database. Cheap to clone: the pool is shared.
#[derive(Clone)]
pub struct PgDb {
    pool: PgPool,
    health: Arc<Health>,
}

/// When this pool last lost a connection. A restart or `pg_terminate_backend` kills every idle
/// connection at once, and the pool only finds out when one is used; so for a while after a
/// loss, each connection is pinged before it is handed out and a dead one is dropped, instead
/// of costing an operation one of its few attempts each. The rest of the time nothing is
/// pinged: that would cost a round trip per operation.
struct Health {
    base: Instant,
    /// Milliseconds since `base` until which connections are suspect.
    suspect_until: AtomicU64,
    max_connections: u32,
}

impl std::fmt::Debug for PgDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connect options hold the password; show the pool's shape only.
        f.debug_struct("PgDb")
            .field("size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PgDb {
    /// Connects to `dsn` with a pool of at most `max_connections`, and applies pending
    /// migrations.
    ///
    /// # Errors
    /// `Unavailable` when the DSN is invalid or the database cannot be reached; `Corrupt` when an
    /// applied migration differs from the one compiled in.
    pub async fn open(dsn: &str, max_connections: u32) -> Result<PgDb, StoreError> {
        let db = Self::connect(dsn, max_connections).await?;
        let applied = db.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "applied postgres migrations");
        }
        Ok(db)
    }

    /// Connects without migrating; one connection is opened at once, so an unreachable
    /// database fails here rather than on the first request.
    ///
    /// # Errors
    /// `Unavailable` when the DSN is invalid or the database cannot be reached.
    pub async fn connect(dsn: &str, max_connections: u32) -> Result<PgDb, StoreError> {
        // The parse error may quote the DSN, password included; say only what is wrong.
        let options = PgConnectOptions::from_str(dsn)
            .map_err(|_| StoreError::Unavailable("the Postgres DSN is not a valid URL".into()))?;
        let max_connections = max_connections.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Not on every acquire (a round trip per operation): only after a loss (`Health`).
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to Postgres: {e}")))?;
        Ok(PgDb {
            pool,
            health: Arc::new(Health {
                base: Instant::now(),
                suspect_until: AtomicU64::new(0),
                max_connections,
            }),
        })
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.health.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a failure: after a lost connection, connections are checked before use for a
    /// while.
    pub(crate) fn note(&self, e: &PgError) {
        if e.lost_connection() {
            let window = u64::try_from(SUSPECT_FOR.as_millis()).unwrap_or(u64::MAX);
            let until = self.millis_now().saturating_add(window);
            self.health
                .suspect_until
                .fetch_max(until, Ordering::Relaxed);
        }
    }

    /// The pool, for the queue's listener and for tests.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations that are not applied yet, each in its own transaction together
    /// with its `schema_migrations` row, and returns their names.
    ///
    /// # Errors
    /// `Corrupt` when an applied migration was edited since (its checksum differs);
    /// `Unavailable` when the database cannot be written.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS {
            let checksum = checksum(sql);
            let mut tx = self.pool.begin().await.map_err(|e| store_err(e.into()))?;
            let outcome = migrate_one(&mut tx, version, name, sql, &checksum)
                .await
                .map_err(|e| store_err(e.into()))?;
            tx.commit().await.map_err(|e| store_err(e.into()))?;
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

    /// Runs a trivial statement.
    pub(crate) async fn ping(&self) -> Result<(), PgError> {
        retrying!(self, "ping", async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok::<_, PgError>(())
        })
    }

    /// Takes a pooled connection; shortly after a lost connection, a live one.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, PgError> {
        let mut conn = self.pool.acquire().await?;
        if self.health.suspect_until.load(Ordering::Relaxed) < self.millis_now() {
            return Ok(conn);
        }
        // Every idle connection may be dead: try each at most once.
        for _ in 0..self.health.max_connections {
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(e) => {
                    tracing::info!(error = %e, "dropping a dead pooled postgres connection");
                    conn.close_on_drop();
                    drop(conn);
                    conn = self.pool.acquire().await?;
                }
            }
        }
        Ok(conn)
    }

    /// Starts a transaction on a connection from [`PgDb::acquire`].
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, PgError> {
        let conn = self.acquire().await?;
        // What `Pool::begin` does, on a connection we checked: the transaction owns the
        // pooled connection, rolls back if dropped unfinished, and returns it to the pool.
        Ok(Transaction::begin(conn, None).await?)
    }
}

/// Applies one migration under the migration lock unless it is applied; `Some(same)` when it
/// was applied before, with whether its checksum matches.
async fn migrate_one(
    tx: &mut Transaction<'static, Postgres>,
    version: i64,
    name: &str,
    sql: &'static str,
    checksum: &str,
) -> Result<Option<bool>, sqlx::Error> {
    // Held to the end of the transaction: a second process starting now waits here, then finds
    // the migration recorded.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT PRIMARY KEY,
            name       TEXT NOT NULL,
            checksum   TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut **tx)
    .await?;
    let found = sqlx::query("SELECT checksum FROM schema_migrations WHERE version = $1")
        .bind(version)
        .fetch_optional(&mut **tx)
        .await?;
    if let Some(row) = found {
        let stored: String = row.try_get("checksum")?;
        return Ok(Some(stored == checksum));
    }
    sqlx::raw_sql(sql).execute(&mut **tx).await?;
    sqlx::query("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(name)
        .bind(checksum)
        .execute(&mut **tx)
        .await?;
    Ok(None)
}

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// A failure inside a Postgres operation, before it is mapped onto a trait's error.
#[derive(Debug)]
pub(crate) enum PgError {
    /// A statement failed; retried when [`transient`].
    Sql(sqlx::Error),
    /// The commit failed: it may or may not have happened, so it is never retried.
    Commit(sqlx::Error),
    /// Anything else, already in the store's terms (decoding failures, named conflicts).
    Store(StoreError),
}

impl From<sqlx::Error> for PgError {
    fn from(e: sqlx::Error) -> Self {
        PgError::Sql(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Store(e)
    }
}

impl PgError {
    /// Whether running the whole operation again may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, PgError::Sql(e) if transient(e))
    }

    /// Whether the connection it ran on is gone (I/O failure, connection exception class 08,
    /// or the server shutting it down, 57P0x).
    pub(crate) fn lost_connection(&self) -> bool {
        let e = match self {
            PgError::Sql(e) | PgError::Commit(e) => e,
            PgError::Store(_) => return false,
        };
        match e {
            sqlx::Error::Io(_) => true,
            sqlx::Error::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
            _ => false,
        }
    }
}

/// Commits `tx`, marking a failure as [`PgError::Commit`].
pub(crate) async fn commit(tx: Transaction<'static, Postgres>) -> Result<(), PgError> {
    tx.commit().await.map_err(PgError::Commit)
}

/// Connection loss, a server going down, pool exhaustion, and the two conflicts Postgres
/// resolves by aborting one transaction (serialization failure `40001`, deadlock `40P01`).
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_code(&c)),
        _ => false,
    }
}

/// SQLSTATEs after which a fresh attempt may work: connection exceptions (class 08), operator
/// intervention (57: admin or crash shutdown, cannot connect now), insufficient resources (53:
/// too many connections), serialization failure and deadlock.
fn transient_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57")
        || code.starts_with("53")
        || code == "40001"
        || code == "40P01"
}

/// The pause before attempt `n` (1-based retries): 50 ms, 100 ms, 200 ms.
pub(crate) fn backoff(n: u32) -> Duration {
    Duration::from_millis(50 << n.saturating_sub(1).min(6))
}

/// [`ATTEMPTS`], for the macro.
pub(crate) const fn attempts() -> u32 {
    ATTEMPTS
}

/// Maps a failure onto the store boundary: unique violation → `Conflict`, no row →
/// `NotFound`, connection, pool and server-availability failures → `Unavailable`, anything else
/// (decoding, a broken invariant, data Postgres refuses) → `Corrupt`.
pub(crate) fn store_err(e: PgError) -> StoreError {
    match e {
        PgError::Store(e) => e,
        PgError::Commit(e) => StoreError::Unavailable(format!("commit failed: {e}")),
        PgError::Sql(e) => {
            let msg = e.to_string();
            match &e {
                sqlx::Error::RowNotFound => StoreError::NotFound(msg),
                sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(msg),
                e if unavailable(e) => StoreError::Unavailable(msg),
                _ => StoreError::Corrupt(msg),
            }
        }
    }
}

/// Maps a failure onto the queue boundary. The queue upserts, so a uniqueness conflict means
/// its own invariants broke: that is corruption, not something a caller can resolve.
pub(crate) fn queue_err(e: PgError) -> QueueError {
    match store_err(e) {
        StoreError::Unavailable(m) => QueueError::Unavailable(m),
        StoreError::Conflict(m) | StoreError::NotFound(m) | StoreError::Corrupt(m) => {
            QueueError::Corrupt(m)
        }
    }
}

fn unavailable(e: &sqlx::Error) -> bool {
    transient(e)
        || matches!(
            e,
            sqlx::Error::PoolClosed | sqlx::Error::Tls(_) | sqlx::Error::BeginFailed
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Every file in migrations/postgres is compiled in, under its file name, in version order.
    #[test]
    fn every_migration_file_is_listed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations/postgres");
        let files: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|f| f.strip_suffix(".sql").map(str::to_owned))
            .collect();
        let listed: BTreeSet<String> = MIGRATIONS.iter().map(|(_, n, _)| (*n).to_owned()).collect();
        assert_eq!(files, listed);
        for (i, &(version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(version, i as i64 + 1, "versions are consecutive from 1");
            assert!(name.starts_with(&format!("{version:04}_")));
            let on_disk = std::fs::read_to_string(dir.join(format!("{name}.sql"))).unwrap();
            assert_eq!(sql, on_disk, "{name} is the file's content");
        }
    }

    #[test]
    fn transient_codes() {
        for code in ["57P01", "08006", "40001", "40P01", "53300"] {
            assert!(transient_code(code), "{code}");
        }
        for code in ["23505", "22021", "42P01"] {
            assert!(!transient_code(code), "{code}");
        }
    }
}
