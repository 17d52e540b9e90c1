//! Faults in Postgres under the real server and workers: the server's connections terminated
//! by `pg_terminate_backend` in the middle of a run lose no work.

use std::time::Duration;

use splai_shared::testing::postgres::with_database;
use splai_shared::testing::services::{Service, locate};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::{Fabric, all_complete_nothing_dead, submit_batch};

/// An admin connection to the test Postgres (found as `splai_shared::testing::services` says)
/// and its URL, or `None` after saying why the test is skipped; with `CI` set a missing
/// Postgres fails instead.
async fn admin(test: &str) -> Option<(PgConnection, String)> {
    let url = locate(Service::Postgres, test)?;
    let conn = PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{test}: connecting to Postgres at {url}: {e}"));
    Some((conn, url))
}

/// Terminates every connection to `db` but the caller's; returns how many.
async fn terminate_backends(admin: &mut PgConnection, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .expect("pg_terminate_backend")
}

/// Jobs submitted before and while Postgres terminates the server's connections all
/// complete, once each, and nothing is dead-lettered.
#[tokio::test]
async fn terminated_postgres_connections_lose_no_work() {
    let Some((mut admin, url)) = admin("terminated_postgres_connections_lose_no_work").await else {
        return;
    };
    let db = format!(
        "splai_e2e_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let dsn = with_database(&url, &db);
    {
        let fabric = Fabric::start(&[
            ("SPLAI_STORE", "postgres"),
            ("SPLAI_POSTGRES_DSN", &dsn),
            ("SPLAI_LEASE_SECONDS", "3"),
            ("SPLAI_HEARTBEAT_SECONDS", "1"),
            ("SPLAI_SWEEP_INTERVAL_MS", "200"),
        ]);
        let echo = [
            ("SPLAI_WORKER_BACKENDS", "echo"),
            ("SPLAI_HEARTBEAT_SECONDS", "1"),
        ];
        let _w1 = fabric.worker("w-pg-1", &echo).await;
        let _w2 = fabric.worker("w-pg-2", &echo).await;

        let mut jobs = submit_batch(&fabric.server.base, 150).await;
        let mut terminated = 0;
        for round in 0..6 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            terminated += terminate_backends(&mut admin, &db).await;
            if round % 2 == 0 {
                jobs.extend(submit_batch(&fabric.server.base, 50).await);
            }
        }
        assert!(terminated > 0, "the server held no connection to {db}");
        all_complete_nothing_dead(&fabric, &jobs).await;
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the test database");
}
