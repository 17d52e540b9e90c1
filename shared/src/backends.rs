//! The one factory that turns backend configuration into the engine's trait objects.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::engine::Backends;
use crate::queue::memory::MemoryLeaseQueue;
use crate::store::StoreError;
use crate::store::memory::MemoryStore;

/// Where state lives (`SPLAI_STORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// An embedded SQLite file (the default).
    #[default]
    Sqlite,
    /// A Postgres database (`SPLAI_POSTGRES_DSN`), shared by any number of processes.
    Postgres,
    /// Process memory; for tests and throwaway runs.
    Memory,
}

/// Where the task queue lives (`SPLAI_QUEUE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// In the store's own database, written in the same transactions (the default).
    #[default]
    Store,
    /// Process memory; only with the memory store.
    Memory,
}

/// An unsupported backend name or combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendChoiceError(String);

impl FromStr for StoreKind {
    type Err = BackendChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sqlite" => Ok(StoreKind::Sqlite),
            "postgres" => Ok(StoreKind::Postgres),
            "memory" => Ok(StoreKind::Memory),
            other => Err(BackendChoiceError(format!(
                "unsupported SPLAI_STORE `{other}`; supported values: sqlite, postgres, memory"
            ))),
        }
    }
}

impl FromStr for QueueKind {
    type Err = BackendChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "store" => Ok(QueueKind::Store),
            "memory" => Ok(QueueKind::Memory),
            other => Err(BackendChoiceError(format!(
                "unsupported SPLAI_QUEUE `{other}`; supported values: store, memory"
            ))),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
            StoreKind::Memory => "memory",
        })
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Store => "store",
            QueueKind::Memory => "memory",
        })
    }
}

/// The default `SPLAI_POSTGRES_MAX_CONNECTIONS`.
pub const DEFAULT_POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// Which backends to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `SPLAI_STORE`.
    pub store: StoreKind,
    /// `SPLAI_QUEUE`.
    pub queue: QueueKind,
    /// `SPLAI_SQLITE_PATH` (default `./.splai/splai.db`).
    pub sqlite_path: PathBuf,
    /// `SPLAI_POSTGRES_DSN`, required with `SPLAI_STORE=postgres`.
    pub postgres_dsn: Option<Secret>,
    /// `SPLAI_POSTGRES_MAX_CONNECTIONS` (default 10): the pool size. The queue's `LISTEN`
    /// keeps one of these connections.
    pub postgres_max_connections: u32,
}

/// A setting that must not be shown: `Debug` prints `[redacted]` (a DSN holds a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::default(),
            queue: QueueKind::default(),
            sqlite_path: PathBuf::from(".splai/splai.db"),
            postgres_dsn: None,
            postgres_max_connections: DEFAULT_POSTGRES_MAX_CONNECTIONS,
        }
    }
}

impl BackendConfig {
    /// Rejects combinations that cannot keep their promises.
    ///
    /// # Errors
    /// A message naming the variables and the supported combinations.
    pub fn validate(&self) -> Result<(), BackendChoiceError> {
        if self.store == StoreKind::Postgres && self.postgres_dsn.is_none() {
            return Err(BackendChoiceError(
                "SPLAI_POSTGRES_DSN must be set when SPLAI_STORE=postgres (e.g. postgres://user:password@host:5432/splai)".into(),
            ));
        }
        if self.postgres_max_connections < 2 {
            return Err(BackendChoiceError(
                "SPLAI_POSTGRES_MAX_CONNECTIONS must be at least 2 (the queue listener keeps one)"
                    .into(),
            ));
        }
        match (self.store, self.queue) {
            (StoreKind::Sqlite | StoreKind::Postgres, QueueKind::Store)
            | (StoreKind::Memory, QueueKind::Memory) => Ok(()),
            (StoreKind::Memory, QueueKind::Store) => Err(BackendChoiceError(
                "SPLAI_QUEUE=store needs a database store; use SPLAI_STORE=sqlite or postgres, or SPLAI_QUEUE=memory with SPLAI_STORE=memory".into(),
            )),
            (StoreKind::Postgres, QueueKind::Memory) => Err(BackendChoiceError(
                "SPLAI_QUEUE=memory would lose queued tasks of a durable Postgres store on restart; use SPLAI_QUEUE=store".into(),
            )),
            (StoreKind::Sqlite, QueueKind::Memory) => Err(BackendChoiceError(
                "SPLAI_QUEUE=memory would lose queued tasks of a durable SQLite store on restart; use SPLAI_QUEUE=store".into(),
            )),
        }
    }
}

/// Errors opening backends.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration names an unsupported backend or combination.
    #[error(transparent)]
    Choice(#[from] BackendChoiceError),
    /// The backend could not be opened.
    #[error("opening the {backend} store failed: {source}")]
    Store {
        /// Which backend.
        backend: StoreKind,
        /// Why.
        source: StoreError,
    },
}

/// Opens the configured backends, running migrations where there are any.
///
/// # Errors
/// An unsupported combination, or a backend that cannot be opened.
pub async fn open(config: &BackendConfig) -> Result<Backends, OpenError> {
    config.validate()?;
    match config.store {
        StoreKind::Memory => Ok(memory()),
        #[cfg(feature = "sqlite")]
        StoreKind::Sqlite => {
            use crate::queue::sqlite::SqliteLeaseQueue;
            use crate::store::Dispatch;
            use crate::store::sqlite::{SqliteDb, SqliteStore};
            let db = SqliteDb::open(&config.sqlite_path)
                .await
                .map_err(|source| OpenError::Store {
                    backend: StoreKind::Sqlite,
                    source,
                })?;
            let store = Arc::new(SqliteStore::new(db.clone(), Dispatch::Direct));
            Ok(Backends {
                jobs: store.clone(),
                workers: store.clone(),
                outbox: store,
                queue: Arc::new(SqliteLeaseQueue::new(db)),
            })
        }
        #[cfg(not(feature = "sqlite"))]
        StoreKind::Sqlite => {
            Err(BackendChoiceError("this build has no sqlite support".into()).into())
        }
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            use crate::queue::postgres::PostgresLeaseQueue;
            use crate::store::Dispatch;
            use crate::store::postgres::{PgDb, PostgresStore};
            let dsn = config.postgres_dsn.as_ref().map_or("", Secret::expose);
            let db = PgDb::open(dsn, config.postgres_max_connections)
                .await
                .map_err(|e| OpenError::Store {
                    backend: StoreKind::Postgres,
                    source: match e {
                        StoreError::Unavailable(m) => {
                            StoreError::Unavailable(format!("SPLAI_POSTGRES_DSN: {m}"))
                        }
                        other => other,
                    },
                })?;
            let store = Arc::new(PostgresStore::new(db.clone(), Dispatch::Direct));
            Ok(Backends {
                jobs: store.clone(),
                workers: store.clone(),
                outbox: store,
                queue: Arc::new(PostgresLeaseQueue::new(db)),
            })
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => {
            Err(BackendChoiceError("this build has no postgres support".into()).into())
        }
    }
}

/// Fresh memory backends.
pub fn memory() -> Backends {
    let store = Arc::new(MemoryStore::new());
    Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store,
        queue: Arc::new(MemoryLeaseQueue::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_list_the_supported_ones() {
        let e = "postgresql".parse::<StoreKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported SPLAI_STORE `postgresql`; supported values: sqlite, postgres, memory"
        );
        let e = "kafka".parse::<QueueKind>().unwrap_err();
        assert!(e.to_string().contains("supported values: store, memory"));
    }

    #[test]
    fn default_is_sqlite_with_the_queue_in_the_store() {
        let c = BackendConfig::default();
        assert_eq!((c.store, c.queue), (StoreKind::Sqlite, QueueKind::Store));
        assert_eq!(c.sqlite_path, PathBuf::from(".splai/splai.db"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn postgres_needs_a_dsn_and_the_store_queue() {
        let mut c = BackendConfig {
            store: StoreKind::Postgres,
            ..BackendConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().contains("SPLAI_POSTGRES_DSN must be set"),
            "{e}"
        );
        c.postgres_dsn = Some(Secret::new("postgres://u:hunter2@db/splai"));
        assert!(c.validate().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"), "the DSN is redacted");
        c.queue = QueueKind::Memory;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("SPLAI_QUEUE=store")
        );
        c.queue = QueueKind::Store;
        c.postgres_max_connections = 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("SPLAI_POSTGRES_MAX_CONNECTIONS")
        );
    }

    /// An unreachable database fails start-up naming the variable.
    #[cfg(feature = "postgres")]
    #[tokio::test]
    async fn unreachable_postgres_names_the_variable() {
        let c = BackendConfig {
            store: StoreKind::Postgres,
            // Port 1 on loopback: nothing listens there, so the connect is refused at once.
            postgres_dsn: Some(Secret::new("postgres://postgres@127.0.0.1:1/none")),
            ..BackendConfig::default()
        };
        let Err(e) = open(&c).await else {
            panic!("opened an unreachable database")
        };
        let msg = e.to_string();
        assert!(msg.contains("SPLAI_POSTGRES_DSN"), "{msg}");
        assert!(msg.contains("postgres store"), "{msg}");
    }
}
