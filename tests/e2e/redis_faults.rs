//! Faults in the Redis queue under the real server and workers: connections dropped by Redis
//! in the middle of a run, and a Redis that comes back empty (a restart without persistence),
//! lose no work.

use std::time::Duration;

use splai_shared::testing::services::{Service, locate};

use crate::{Fabric, all_complete_nothing_dead, submit_batch};

/// A database number no other test uses, so that this test's `CLIENT KILL`s hit only the
/// connections of its own server.
const FAULT_DB: &str = "9";

/// An admin connection to the test Redis (found as `splai_shared::testing::services` says)
/// and its URL, or `None` after saying why the test is skipped; with `CI` set a missing Redis
/// fails instead.
async fn admin(test: &str) -> Option<(redis::aio::MultiplexedConnection, String)> {
    let url = locate(Service::Redis, test)?;
    let conn = redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{test}: connecting to Redis at {url}: {e}"));
    Some((conn, url))
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
async fn wipe(url: &str, prefix: &str) -> usize {
    let mut conn = redis::Client::open(url)
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
    let Some((mut admin, url)) = admin("redis_faults_lose_no_work").await else {
        return;
    };
    let key = format!(
        "splai-e2e:{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos()
    );
    let addr = Service::Redis
        .addr(&url)
        .expect("the test Redis has an address");
    let fabric = Fabric::start(&[
        ("SPLAI_QUEUE", "redis"),
        ("SPLAI_REDIS_ADDR", &addr),
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
    assert!(wipe(&url, &key).await > 0, "the queue had no keys to lose");
    kill_fault_db_clients(&mut admin).await;

    all_complete_nothing_dead(&fabric, &jobs).await;
    wipe(&url, &key).await;
}
