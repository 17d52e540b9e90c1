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
            "memory" => Ok(StoreKind::Memory),
            other => Err(BackendChoiceError(format!(
                "unsupported SPLAI_STORE `{other}`; supported values: sqlite, memory"
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

/// Which backends to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// `SPLAI_STORE`.
    pub store: StoreKind,
    /// `SPLAI_QUEUE`.
    pub queue: QueueKind,
    /// `SPLAI_SQLITE_PATH` (default `./.splai/splai.db`).
    pub sqlite_path: PathBuf,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            store: StoreKind::default(),
            queue: QueueKind::default(),
            sqlite_path: PathBuf::from(".splai/splai.db"),
        }
    }
}

impl BackendConfig {
    /// Rejects combinations that cannot keep their promises.
    ///
    /// # Errors
    /// A message naming the variables and the supported combinations.
    pub fn validate(&self) -> Result<(), BackendChoiceError> {
        match (self.store, self.queue) {
            (StoreKind::Sqlite, QueueKind::Store) | (StoreKind::Memory, QueueKind::Memory) => Ok(()),
            (StoreKind::Memory, QueueKind::Store) => Err(BackendChoiceError(
                "SPLAI_QUEUE=store needs a database store; use SPLAI_STORE=sqlite, or SPLAI_QUEUE=memory with SPLAI_STORE=memory".into(),
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
            "unsupported SPLAI_STORE `postgresql`; supported values: sqlite, memory"
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
}
