//! The one factory that turns backend configuration into the engine's trait objects.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::engine::Backends;
use crate::queue::memory::MemoryLeaseQueue;
use crate::queue::{LeaseQueue, QueueError};
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
    /// A DynamoDB table (`SPLAI_DYNAMODB_TABLE`); it has no queue of its own, so it needs an
    /// external queue behind its outbox.
    DynamoDb,
}

/// Where the task queue lives (`SPLAI_QUEUE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// In the store's own database, written in the same transactions (the default).
    #[default]
    Store,
    /// Redis (`SPLAI_REDIS_*`), fed through the store's outbox.
    Redis,
    /// Amazon SQS (`SPLAI_SQS_QUEUE_PREFIX`), fed through the store's outbox.
    Sqs,
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
            "dynamodb" => Ok(StoreKind::DynamoDb),
            other => Err(BackendChoiceError(format!(
                "unsupported SPLAI_STORE `{other}`; supported values: sqlite, postgres, memory, dynamodb"
            ))),
        }
    }
}

impl FromStr for QueueKind {
    type Err = BackendChoiceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "store" => Ok(QueueKind::Store),
            "redis" => Ok(QueueKind::Redis),
            "sqs" => Ok(QueueKind::Sqs),
            "memory" => Ok(QueueKind::Memory),
            other => Err(BackendChoiceError(format!(
                "unsupported SPLAI_QUEUE `{other}`; supported values: store, redis, sqs, memory"
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
            StoreKind::DynamoDb => "dynamodb",
        })
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueKind::Store => "store",
            QueueKind::Redis => "redis",
            QueueKind::Sqs => "sqs",
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
    /// `SPLAI_REDIS_*`, used with `SPLAI_QUEUE=redis`.
    pub redis: RedisConfig,
    /// `SPLAI_POSTGRES_DSN`, required with `SPLAI_STORE=postgres`.
    pub postgres_dsn: Option<Secret>,
    /// `SPLAI_POSTGRES_MAX_CONNECTIONS` (default 10): the pool size. The queue's `LISTEN`
    /// keeps one of these connections.
    pub postgres_max_connections: u32,
    /// Names and set-up of the AWS backends (`SPLAI_SQS_*`, `SPLAI_DYNAMODB_TABLE`, `SPLAI_S3_*`).
    pub aws: crate::aws::AwsSettings,
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
            redis: RedisConfig::default(),
            postgres_dsn: None,
            postgres_max_connections: DEFAULT_POSTGRES_MAX_CONNECTIONS,
            aws: crate::aws::AwsSettings::default(),
        }
    }
}

/// Where the Redis queue lives and how it behaves.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `SPLAI_REDIS_ADDR`, `host:port` (default `127.0.0.1:6379`).
    pub addr: String,
    /// `SPLAI_REDIS_PASSWORD` (none by default).
    pub password: Option<String>,
    /// `SPLAI_REDIS_DB` (default 0).
    pub db: i64,
    /// `SPLAI_REDIS_KEY`, the prefix of every queue key (default `splai:tasks`).
    pub key: String,
    /// `SPLAI_REDIS_DEADLETTER_MAX` (default 5): deliveries after which an entry whose lease
    /// runs out is dead-lettered even if its own `max_attempts` allows more, so a task that
    /// keeps killing its workers stops circulating; 0 leaves only `max_attempts`.
    pub deadletter_max: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6379".into(),
            password: None,
            db: 0,
            key: "splai:tasks".into(),
            deadletter_max: 5,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("key", &self.key)
            .field("deadletter_max", &self.deadletter_max)
            .finish()
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
            (StoreKind::DynamoDb, QueueKind::Store | QueueKind::Memory) => Err(BackendChoiceError(format!(
                "SPLAI_STORE=dynamodb has no queue of its own and SPLAI_QUEUE={} cannot stand in for one; set SPLAI_QUEUE to an external queue (redis)",
                self.queue
            ))),
            // Every other queue is external: entries reach it through the table's outbox.
            (StoreKind::DynamoDb, _) => Ok(()),
            (StoreKind::Sqlite | StoreKind::Postgres, QueueKind::Store)
            | (StoreKind::Memory, QueueKind::Memory)
            | (
                StoreKind::Sqlite | StoreKind::Postgres | StoreKind::Memory,
                QueueKind::Redis | QueueKind::Sqs,
            ) => Ok(()),
            (StoreKind::Memory, QueueKind::Store) => Err(BackendChoiceError(
                "SPLAI_QUEUE=store needs a database store; use SPLAI_STORE=sqlite or postgres, or SPLAI_QUEUE=memory, redis or sqs with SPLAI_STORE=memory".into(),
            )),
            (StoreKind::Postgres, QueueKind::Memory) => Err(BackendChoiceError(
                "SPLAI_QUEUE=memory would lose queued tasks of a durable Postgres store on restart; use SPLAI_QUEUE=store, redis or sqs".into(),
            )),
            (StoreKind::Sqlite, QueueKind::Memory) => Err(BackendChoiceError(
                "SPLAI_QUEUE=memory would lose queued tasks of a durable SQLite store on restart; use SPLAI_QUEUE=store, redis or sqs".into(),
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
    /// The queue could not be reached.
    #[error("opening the {backend} queue failed: {source}")]
    Queue {
        /// Which backend.
        backend: QueueKind,
        /// Why.
        source: QueueError,
    },
}

/// Opens the configured backends, running migrations where there are any.
///
/// # Errors
/// An unsupported combination, or a backend that cannot be opened.
/// An AWS backend takes its SDK configuration from `aws`, loaded once however many use it.
pub async fn open(
    config: &BackendConfig,
    aws: &crate::aws::SharedSdk,
) -> Result<Backends, OpenError> {
    config.validate()?;
    match config.store {
        StoreKind::Memory => {
            let mut backends = memory();
            if matches!(config.queue, QueueKind::Redis | QueueKind::Sqs) {
                // The memory store always dispatches through its outbox.
                backends.queue = external_queue(config, aws).await?;
            }
            Ok(backends)
        }
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
            let (dispatch, queue): (_, Arc<dyn LeaseQueue>) = match config.queue {
                QueueKind::Store => (
                    Dispatch::Direct,
                    Arc::new(SqliteLeaseQueue::new(db.clone())),
                ),
                // Ready entries are committed to the outbox with the job change and relayed,
                // so a crash between the two loses nothing.
                _ => (Dispatch::Outbox, external_queue(config, aws).await?),
            };
            let audit = Arc::new(crate::store::sqlite::SqliteAuditLog::new(db.clone()));
            let store = Arc::new(SqliteStore::new(db, dispatch));
            Ok(Backends {
                jobs: store.clone(),
                workers: store.clone(),
                outbox: store.clone(),
                webhooks: store.clone(),
                locks: store,
                queue,
                audit,
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
            let (dispatch, queue): (_, Arc<dyn LeaseQueue>) = match config.queue {
                QueueKind::Store => (
                    Dispatch::Direct,
                    Arc::new(PostgresLeaseQueue::new(db.clone())),
                ),
                // As with SQLite: entries commit to the outbox with the job change.
                _ => (Dispatch::Outbox, external_queue(config, aws).await?),
            };
            let audit = Arc::new(crate::store::postgres::PostgresAuditLog::new(db.clone()));
            let store = Arc::new(PostgresStore::new(db, dispatch));
            Ok(Backends {
                jobs: store.clone(),
                workers: store.clone(),
                outbox: store.clone(),
                webhooks: store.clone(),
                locks: store,
                queue,
                audit,
            })
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => {
            Err(BackendChoiceError("this build has no postgres support".into()).into())
        }
        #[cfg(feature = "aws")]
        StoreKind::DynamoDb => {
            use crate::store::dynamodb::{DynamoAuditLog, DynamoDb, DynamoStore};
            let failed = |source| OpenError::Store {
                backend: StoreKind::DynamoDb,
                source,
            };
            let sdk = aws
                .get()
                .await
                .map_err(|e| failed(StoreError::Unavailable(e.to_string())))?;
            let db = DynamoDb::open(sdk, &config.aws.dynamodb_table, config.aws.create_resources)
                .await
                .map_err(failed)?;
            // Ready entries commit to the outbox with the job change, and the relay moves them.
            let queue = external_queue(config, aws).await?;
            let audit = Arc::new(DynamoAuditLog::new(db.clone()));
            let store = Arc::new(DynamoStore::new(db));
            Ok(Backends {
                jobs: store.clone(),
                workers: store.clone(),
                outbox: store.clone(),
                webhooks: store.clone(),
                locks: store,
                queue,
                audit,
            })
        }
        #[cfg(not(feature = "aws"))]
        StoreKind::DynamoDb => {
            Err(BackendChoiceError("this build has no dynamodb support".into()).into())
        }
    }
}

/// Connects the queue of a store that dispatches through its outbox.
#[cfg_attr(not(feature = "aws"), allow(unused_variables))]
async fn external_queue(
    config: &BackendConfig,
    aws: &crate::aws::SharedSdk,
) -> Result<Arc<dyn LeaseQueue>, OpenError> {
    match config.queue {
        #[cfg(feature = "redis")]
        QueueKind::Redis => {
            let queue = crate::queue::redis::RedisLeaseQueue::connect(&config.redis)
                .await
                .map_err(|source| OpenError::Queue {
                    backend: QueueKind::Redis,
                    source,
                })?;
            Ok(Arc::new(queue))
        }
        #[cfg(not(feature = "redis"))]
        QueueKind::Redis => {
            Err(BackendChoiceError("this build has no redis support".into()).into())
        }
        #[cfg(feature = "aws")]
        QueueKind::Sqs => {
            let queue_err = |source| OpenError::Queue {
                backend: QueueKind::Sqs,
                source,
            };
            let sdk = aws
                .get()
                .await
                .map_err(|e| queue_err(QueueError::Unavailable(e.to_string())))?;
            let queue = crate::queue::sqs::SqsLeaseQueue::open(sdk, &config.aws)
                .await
                .map_err(queue_err)?;
            Ok(Arc::new(queue))
        }
        #[cfg(not(feature = "aws"))]
        QueueKind::Sqs => Err(BackendChoiceError("this build has no aws support".into()).into()),
        other => {
            Err(BackendChoiceError(format!("SPLAI_QUEUE={other} is not an external queue")).into())
        }
    }
}

/// Fresh memory backends.
pub fn memory() -> Backends {
    let store = Arc::new(MemoryStore::new());
    Backends {
        jobs: store.clone(),
        workers: store.clone(),
        outbox: store.clone(),
        webhooks: store.clone(),
        locks: store,
        queue: Arc::new(MemoryLeaseQueue::new()),
        audit: Arc::new(crate::store::memory::MemoryAuditLog::new()),
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
            "unsupported SPLAI_STORE `postgresql`; supported values: sqlite, postgres, memory, dynamodb"
        );
        let e = "kafka".parse::<QueueKind>().unwrap_err();
        assert!(
            e.to_string()
                .contains("supported values: store, redis, sqs, memory")
        );
    }

    #[test]
    fn redis_queue_goes_with_either_store() {
        for store in [StoreKind::Sqlite, StoreKind::Memory] {
            let c = BackendConfig {
                store,
                queue: "redis".parse().unwrap(),
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{store}");
        }
        let r = RedisConfig::default();
        assert_eq!(
            (r.addr.as_str(), r.db, r.key.as_str(), r.deadletter_max),
            ("127.0.0.1:6379", 0, "splai:tasks", 5)
        );
    }

    /// `SPLAI_QUEUE=redis` opens a Redis queue behind either store, and the SQLite store then
    /// dispatches through its outbox: a submitted job's entry reaches Redis by the relay.
    #[cfg(all(feature = "redis", feature = "test-utils"))]
    #[tokio::test]
    async fn redis_queue_opens_behind_the_outbox() {
        use crate::testing::redis::TestRedis;
        let Some(redis) = TestRedis::find("redis_queue_opens_behind_the_outbox").await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let addr = redis.url.trim_start_matches("redis://");
        let config = |store| BackendConfig {
            store,
            queue: QueueKind::Redis,
            sqlite_path: dir.path().join("splai.db"),
            redis: RedisConfig {
                addr: addr.split('/').next().unwrap().to_owned(),
                key: redis.key.clone(),
                ..Default::default()
            },
            ..BackendConfig::default()
        };
        for store in [StoreKind::Memory, StoreKind::Sqlite] {
            let b = open(&config(store), &Default::default()).await.unwrap();
            assert_eq!(b.queue.backend_name(), "redis", "{store}");
            b.queue.ping().await.unwrap();
        }
        let h = crate::testing::Harness::new(
            open(&config(StoreKind::Sqlite), &Default::default())
                .await
                .unwrap(),
            None,
        );
        let w = h.cpu_worker("w1").await;
        h.engine
            .submit(crate::testing::a_chain_job())
            .await
            .unwrap();
        assert_eq!(
            h.claim(&w, 10).await.len(),
            1,
            "the entry went through the outbox"
        );
    }

    /// DynamoDB has no queue: it goes with an external queue and names the fix otherwise.
    #[test]
    fn dynamodb_needs_an_external_queue() {
        let mut c = BackendConfig {
            store: "dynamodb".parse().unwrap(),
            queue: QueueKind::Redis,
            ..BackendConfig::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(c.store.to_string(), "dynamodb");
        for queue in [QueueKind::Store, QueueKind::Memory] {
            c.queue = queue;
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("SPLAI_STORE=dynamodb has no queue of its own")
                    && e.contains(&format!("SPLAI_QUEUE={queue}")),
                "{e}"
            );
        }
    }

    #[test]
    fn sqs_queue_goes_with_every_store() {
        for store in [StoreKind::Sqlite, StoreKind::Postgres, StoreKind::Memory] {
            let c = BackendConfig {
                store,
                queue: "sqs".parse().unwrap(),
                postgres_dsn: Some(Secret::new("postgres://db/splai")),
                ..Default::default()
            };
            assert!(c.validate().is_ok(), "{store}");
            assert_eq!(c.queue.to_string(), "sqs");
        }
    }

    #[test]
    fn redis_password_stays_out_of_debug_output() {
        let c = RedisConfig {
            password: Some("hunter2".into()),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
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
        let Err(e) = open(&c, &Default::default()).await else {
            panic!("opened an unreachable database")
        };
        let msg = e.to_string();
        assert!(msg.contains("SPLAI_POSTGRES_DSN"), "{msg}");
        assert!(msg.contains("postgres store"), "{msg}");
    }
}
