//! Faults in the Redis queue under the real server and workers: connections dropped by Redis
//! in the middle of a run, and a Redis that comes back empty (a restart without persistence),
//! lose no work.

use std::time::Duration;

use crate::{Fabric, all_complete_nothing_dead, submit_batch};

/// A database number no other test uses, so that this test's `CLIENT KILL`s hit only the
/// connections of its own server.
const FAULT_DB: &str = "9";

/// An admin connection to the test Redis (`SPLAI_TEST_REDIS_URL`), or `None` after saying why
/// the test is skipped; with `CI` set a missing Redis fails instead.
async fn admin(test: &str) -> Option<redis::aio::MultiplexedConnection> {
    let url =
        std::env::var("SPLAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let conn = async {
        redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await
    };
    match tokio::time::timeout(Duration::from_secs(3), conn).await {
        Ok(Ok(c)) => Some(c),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 3 s".into(),
            };
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: Redis at {url} unreachable ({why}) and CI is set"
            );
            eprintln!("SKIPPED {test}: no Redis at {url} ({why})");
            None
        }
    }
}

/// Kills every client connected to [`FAULT_DB`]; returns how many.
async fn kill_fault_db_clients(admin: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.split(' ').any(|f| f == format!("db={FAULT_DB}")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect();
    for id in &ids {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(admin)
            .await
            .expect("CLIENT KILL");
    }
    ids.len()
}

/// What a Redis restart without persistence leaves of the queue: nothing. Deletes every key
/// under `prefix` in [`FAULT_DB`], over a connection of its own.
async fn wipe(prefix: &str) -> usize {
    let url =
        std::env::var("SPLAI_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut conn = redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: redis::Value = redis::cmd("SELECT")
        .arg(FAULT_DB)
        .query_async(&mut conn)
        .await
        .expect("SELECT");
    redis::cmd("EVAL")
        .arg(
            "local ks = redis.call('KEYS', ARGV[1]) \
             for _, k in ipairs(ks) do redis.call('DEL', k) end return #ks",
        )
        .arg(0)
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("wipe")
}

/// Jobs submitted before and while Redis drops the server's connections, and jobs whose
/// entries a Redis "restart" wiped, all complete (the sweeper's reconciliation enqueues the
/// lost ones again), and nothing is dead-lettered.
#[tokio::test]
async fn redis_faults_lose_no_work() {
    let Some(mut admin) = admin("redis_faults_lose_no_work").await else {
        return;
    };
    let key = format!(
        "splai-e2e:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos()
    );
    let fabric = Fabric::start(&[
        ("SPLAI_QUEUE", "redis"),
        ("SPLAI_REDIS_DB", FAULT_DB),
        ("SPLAI_REDIS_KEY", &key),
        // Short leases, so a claim whose answer a killed connection lost comes back soon.
        ("SPLAI_LEASE_SECONDS", "3"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
        ("SPLAI_SWEEP_INTERVAL_MS", "200"),
        ("SPLAI_RECONCILE_AFTER_SECONDS", "1"),
    ]);
    let echo = [
        ("SPLAI_WORKER_BACKENDS", "echo"),
        ("SPLAI_HEARTBEAT_SECONDS", "1"),
    ];
    let _w1 = fabric.worker("w-redis-1", &echo).await;
    let _w2 = fabric.worker("w-redis-2", &echo).await;

    let mut jobs = submit_batch(&fabric.server.base, 150).await;
    let mut killed = 0;
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        killed += kill_fault_db_clients(&mut admin).await;
        if round % 2 == 0 {
            jobs.extend(submit_batch(&fabric.server.base, 50).await);
        }
    }
    assert!(killed > 0, "the server held no connection to db {FAULT_DB}");
    // The restart: everything the queue held is gone, and so are the connections.
    jobs.extend(submit_batch(&fabric.server.base, 100).await);
    assert!(wipe(&key).await > 0, "the queue had no keys to lose");
    kill_fault_db_clients(&mut admin).await;

    all_complete_nothing_dead(&fabric, &jobs).await;
    wipe(&key).await;
}
