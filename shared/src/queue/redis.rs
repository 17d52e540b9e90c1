//! Redis lease queue (`SPLAI_QUEUE=redis`): every multi-step operation is one Lua script.
//!
//! Key layout under `SPLAI_REDIS_KEY` (default `splai:tasks`), the upstream one plus two keys:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<key>:pending` | list | pending entries in claim order: rank, then FIFO `seq` |
//! | `<key>:claims` | hash | lease id → task member |
//! | `<key>:visibility` | sorted set | lease ids scored by lease deadline (ms) |
//! | `<key>:dead` | list | dead-lettered task members, oldest first |
//! | `<key>:entries` | hash | task member → the entry and its state as JSON |
//! | `<key>:seq` | string | the FIFO counter |
//!
//! A task member is `<job_id>|<task_id>` (`|` never occurs in ids), so an entry is keyed by
//! task and enqueue is an upsert. A pending element is `<rank><seq, 16 digits><member>`: the
//! list stays sorted by priority class then FIFO, and an entry that returns to pending (nack,
//! release, expiry, upsert, revival) is inserted back at its old place. A claim walks the list
//! from the head, skipping entries in backoff or not admitted by the worker
//! (`Requirements::admit`, in Lua), so its cost follows the entries skipped, as in SQLite.
//! `LLEN <key>:pending`, `HLEN <key>:claims` and `LLEN <key>:dead` still count what upstream
//! dashboards expect. For Redis Cluster, put a hash tag in the key (`{splai:tasks}`): every
//! script names all six keys.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError, Script};

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::backends::RedisConfig;
use crate::clock::{to_millis, truncate_millis};
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, QueueEntry, TaskRef, Timestamp, WorkerCaps,
};

mod record;
#[cfg(test)]
mod tests;

use self::record::{Record, corrupt};

/// One script per operation, each prefixed by the shared helpers in `common.lua`.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("redis/common.lua"),
                "\n",
                include_str!(concat!("redis/", $file))
            ))
        })
    };
}

static ENQUEUE: LazyLock<Script> = script!("enqueue.lua");
static CLAIM: LazyLock<Script> = script!("claim.lua");
static RENEW: LazyLock<Script> = script!("renew.lua");
static ACK: LazyLock<Script> = script!("ack.lua");
static NACK: LazyLock<Script> = script!("nack.lua");
static RELEASE: LazyLock<Script> = script!("release.lua");
static DEAD_LETTER: LazyLock<Script> = script!("dead_letter.lua");
static EXPIRE: LazyLock<Script> = script!("expire.lua");
static DISCARD: LazyLock<Script> = script!("discard.lua");
static REQUEUE_DEAD: LazyLock<Script> = script!("requeue_dead.lua");
static LIST_DEAD: LazyLock<Script> = script!("list_dead.lua");
static DEPTH: LazyLock<Script> = script!("depth.lua");
static HOLDS: LazyLock<Script> = script!("holds.lua");

fn member(t: &TaskRef) -> String {
    format!("{}|{}", t.job_id, t.task_id)
}

/// Connection errors are `Unavailable` (the caller retries); replies of the wrong shape are
/// `Corrupt`. Server-side errors (a script error, OOM, LOADING) are transient or operator
/// matters, so they count as unavailable too.
fn map_err(e: RedisError) -> QueueError {
    match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => corrupt("reply", e),
        _ => QueueError::Unavailable(format!("redis: {e}")),
    }
}

/// A [`LeaseQueue`] in Redis. Cheap to clone: clones share one multiplexed connection that
/// reconnects by itself after Redis restarts or drops it.
#[derive(Clone)]
pub struct RedisLeaseQueue {
    conn: ConnectionManager,
    /// pending, claims, visibility, dead, entries, seq.
    keys: [String; 6],
    deadletter_max: u32,
}

impl std::fmt::Debug for RedisLeaseQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeaseQueue")
            .field("key", &self.keys[0])
            .field("deadletter_max", &self.deadletter_max)
            .finish_non_exhaustive()
    }
}

impl RedisLeaseQueue {
    /// Connects as configured (`SPLAI_REDIS_*`).
    ///
    /// # Errors
    /// `Unavailable` when the address does not parse or Redis cannot be reached.
    pub async fn connect(config: &RedisConfig) -> Result<Self, QueueError> {
        let (host, port) = config
            .addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                QueueError::Unavailable(format!(
                    "SPLAI_REDIS_ADDR `{}` is not host:port",
                    config.addr
                ))
            })?;
        let mut redis = RedisConnectionInfo::default().set_db(config.db);
        if let Some(password) = &config.password {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(host, port)
            .into_connection_info()
            .map_err(map_err)?
            .set_redis_settings(redis);
        Self::open(info, &config.key, config.deadletter_max)
            .await
            .map_err(|e| match e {
                QueueError::Unavailable(why) => {
                    QueueError::Unavailable(format!("SPLAI_REDIS_ADDR={}: {why}", config.addr))
                }
                other => other,
            })
    }

    /// Connects to a `redis://` URL (tests and tools).
    ///
    /// # Errors
    /// `Unavailable` when the URL does not parse or Redis cannot be reached.
    pub async fn connect_url(
        url: &str,
        key: &str,
        deadletter_max: u32,
    ) -> Result<Self, QueueError> {
        Self::open(
            url.into_connection_info().map_err(map_err)?,
            key,
            deadletter_max,
        )
        .await
    }

    async fn open(
        info: redis::ConnectionInfo,
        key: &str,
        deadletter_max: u32,
    ) -> Result<Self, QueueError> {
        let client = redis::Client::open(info).map_err(map_err)?;
        // Bounded waits: a Redis that stops answering surfaces as `Unavailable` instead of
        // hanging a claim, and reconnection keeps trying in the background.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(6);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_err)?;
        Ok(Self {
            conn,
            keys: Self::key_names(key),
            deadletter_max,
        })
    }

    /// Every key the queue under `key` uses (to delete a test's keys, or inspect them).
    pub fn key_names(key: &str) -> [String; 6] {
        ["pending", "claims", "visibility", "dead", "entries", "seq"].map(|k| format!("{key}:{k}"))
    }

    /// Runs a script with the queue's keys and `args`. A connection dropped under the call is
    /// retried once on the reconnected connection: every script is safe to repeat, because
    /// each acts only on the state it finds (a lease already acked is not acked twice, an
    /// upsert replaces), and the store, not the queue, is the source of truth.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[String],
    ) -> Result<T, QueueError> {
        let mut invocation = script.prepare_invoke();
        for k in &self.keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let mut conn = self.conn.clone();
        match invocation.invoke_async(&mut conn).await {
            Err(e) if dropped(&e) => {
                tracing::warn!(error = %e, "redis connection lost; retrying once");
                invocation.invoke_async(&mut conn).await.map_err(map_err)
            }
            other => other.map_err(map_err),
        }
    }

    /// Runs a per-item script; `args` empty means nothing to do.
    async fn run_items(&self, script: &Script, args: Vec<String>) -> Result<(), QueueError> {
        if !args.is_empty() {
            let _: i64 = self.run(script, &args).await?;
        }
        Ok(())
    }
}

/// The items whose per-item flag (from a script) is set.
fn flagged<T: Clone>(items: &[T], flags: &[i64]) -> Vec<T> {
    items
        .iter()
        .zip(flags)
        .filter(|(_, f)| **f != 0)
        .map(|(i, _)| i.clone())
        .collect()
}

#[async_trait]
impl LeaseQueue for RedisLeaseQueue {
    fn backend_name(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError> {
        let args = entries
            .iter()
            .map(|e| serde_json::to_string(&Record::of(e)).map_err(|e| corrupt("entry", e)))
            .collect::<Result<Vec<_>, _>>()?;
        self.run_items(&ENQUEUE, args).await
    }

    #[tracing::instrument(skip_all, fields(max))]
    async fn claim(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let json = |s| serde_json::to_string(s).map_err(|e| corrupt("capabilities", e));
        let args = [
            to_millis(now).to_string(),
            to_millis(truncate_millis(now + lease_for)).to_string(),
            max.to_string(),
            // A fresh time-ordered prefix per claim: ids are unique without a random id per
            // entry and sort in claim order, which is how `expire` breaks deadline ties.
            format!("{}-", LeaseId::generate()),
            worker
                .worker_id
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            if worker.gpu { "1" } else { "0" }.to_owned(),
            json(&worker.backends)?,
            json(&worker.models)?,
        ];
        let raws: Vec<String> = self.run(&CLAIM, &args).await?;
        raws.iter()
            .map(|r| Record::decode(r)?.into_lease())
            .collect()
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![to_millis(until).to_string()];
        args.extend(leases.iter().map(ToString::to_string));
        let held: Vec<i64> = self.run(&RENEW, &args).await?;
        Ok(flagged(leases, &held))
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        self.run_items(&ACK, leases.iter().map(ToString::to_string).collect())
            .await
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        let args = leases
            .iter()
            .flat_map(|(l, at)| [l.to_string(), to_millis(*at).to_string()])
            .collect();
        self.run_items(&NACK, args).await
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        self.run_items(&RELEASE, leases.iter().map(ToString::to_string).collect())
            .await
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut args = vec![to_millis(now).to_string()];
        args.extend(
            leases
                .iter()
                .flat_map(|(l, reason)| [l.to_string(), reason.clone()]),
        );
        self.run_items(&DEAD_LETTER, args).await
    }

    #[tracing::instrument(skip_all)]
    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let args = [to_millis(now).to_string(), self.deadletter_max.to_string()];
        let raws: Vec<String> = self.run(&EXPIRE, &args).await?;
        raws.chunks(2)
            .map(|pair| {
                let [raw, outcome] = pair else {
                    return Err(corrupt("expire reply", "odd length"));
                };
                let outcome = match outcome.as_str() {
                    "dead" => ExpiryOutcome::DeadLettered,
                    "requeued" => ExpiryOutcome::Requeued,
                    other => return Err(corrupt("expiry outcome", other)),
                };
                Ok(Expired {
                    lease: Record::decode(raw)?.into_lease()?,
                    outcome,
                })
            })
            .collect()
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        self.run_items(&DISCARD, tasks.iter().map(member).collect())
            .await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raws: Vec<String> = self.run(&LIST_DEAD, &[limit.to_string()]).await?;
        raws.iter()
            .map(|r| Record::decode(r)?.into_dead_letter())
            .collect()
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![to_millis(now).to_string()];
        args.extend(tasks.iter().map(member));
        let revived: Vec<i64> = self.run(&REQUEUE_DEAD, &args).await?;
        Ok(flagged(tasks, &revived))
    }

    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<String> = tasks.iter().map(member).collect();
        let flags: Vec<i64> = self.run(&HOLDS, &args).await?;
        Ok(flags.into_iter().map(|f| f == 1).collect())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let n: Vec<u64> = self.run(&DEPTH, &[]).await?;
        let [interactive, standard, batch, leased, dead] = n[..] else {
            return Err(corrupt("depth reply", format!("{n:?}")));
        };
        Ok(QueueDepth {
            interactive,
            standard,
            batch,
            leased,
            dead,
        })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        let pong: Result<String, _> = match ping.query_async(&mut conn).await {
            Err(e) if dropped(&e) => ping.query_async(&mut conn).await,
            other => other,
        };
        pong.map(drop).map_err(map_err)
    }
}

/// Whether the connection broke under a call (the manager reconnects behind it).
fn dropped(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}
