//! A fresh Postgres database per test, on the server the tests find (see
//! [`services`](super::services)). Each test creates its own database (`splai_t_<uuid>`) and
//! drops it afterwards, so tests run in parallel.

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::services::{Service, locate};
use crate::store::postgres::PgDb;

/// Pool size of a test database's [`PgDb`].
const POOL: u32 = 8;

/// A migrated database of its own for one test, dropped (with its connections) when this is.
pub struct TestDb {
    /// The database, migrated.
    pub db: PgDb,
    name: String,
    admin_url: String,
    url: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).finish()
    }
}

impl TestDb {
    /// A fresh migrated database for `test`, or `None` (after printing why) when no Postgres
    /// is found and `CI` is not set.
    ///
    /// # Panics
    /// When no Postgres is found and `CI` is set, or the database cannot be created.
    pub async fn create(test: &str) -> Option<TestDb> {
        let admin_url = locate(Service::Postgres, test)?;
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{test}: connecting to Postgres at {admin_url}: {e}"));
        let name = format!("splai_t_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        let db = PgDb::open(&url, POOL)
            .await
            .expect("open the test database");
        Some(TestDb {
            db,
            name,
            admin_url,
            url,
        })
    }

    /// The test database's URL (to open more pools on it, as other processes would).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Terminates every connection to the test database (`pg_terminate_backend`), as a server
    /// restart or an operator would; returns how many there were.
    ///
    /// # Panics
    /// When the admin connection fails.
    pub async fn terminate_connections(&self) -> i64 {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("admin connection");
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()) AS t",
        )
        .bind(&self.name)
        .fetch_one(&mut admin)
        .await
        .expect("terminate backends");
        let _ = admin.close().await;
        killed
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on; a thread with a
        // runtime of its own can.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
                        eprintln!("dropping test database {name}: {e}");
                    }
                }
            });
        });
        let _ = dropped.join();
    }
}

/// `url` with its database replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(authority);
    let (host, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let host = host.split('/').next().unwrap_or(host);
    format!("{head}{host}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/test?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
