//! The Redis the tests run against: found from `SPLAI_TEST_REDIS_URL`, one key prefix per test.

use std::time::Duration;

use crate::queue::redis::RedisLeaseQueue;

/// The variable naming the test Redis.
pub const URL_VAR: &str = "SPLAI_TEST_REDIS_URL";

/// A test's own corner of Redis: a fresh key prefix, whose keys are deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    /// The server's URL.
    pub url: String,
    /// The key prefix (`splai-test:<uuid>`), unique to this test.
    pub key: String,
}

impl TestRedis {
    /// The Redis at `SPLAI_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) with a fresh
    /// prefix, or `None` after printing why `test` is skipped when it cannot be reached.
    ///
    /// # Panics
    /// When Redis is unreachable and `CI` is set: a missing service is never silently green.
    pub async fn find(test: &str) -> Option<Self> {
        let url = std::env::var(URL_VAR).unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let reach = async {
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        let why = match tokio::time::timeout(Duration::from_secs(3), reach).await {
            Ok(Ok(_)) => {
                return Some(Self {
                    url,
                    key: format!("splai-test:{}", uuid::Uuid::now_v7()),
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer within 3 s".to_owned(),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: Redis at {url} unreachable ({why}) and CI is set"
        );
        eprintln!("SKIPPED {test}: no Redis at {url} ({why}); set {URL_VAR}");
        None
    }

    /// A queue under this test's prefix.
    ///
    /// # Panics
    /// When Redis cannot be reached any more.
    pub async fn queue(&self, deadletter_max: u32) -> RedisLeaseQueue {
        RedisLeaseQueue::connect_url(&self.url, &self.key, deadletter_max)
            .await
            .expect("connect to the test Redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // A blocking connection: drop cannot await, and one DEL is quick.
        let keys = RedisLeaseQueue::key_names(&self.key);
        let deleted = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("DEL").arg(&keys[..]).query::<i64>(&mut c));
        if let Err(e) = deleted {
            eprintln!("could not delete test keys {}:*: {e}", self.key);
        }
    }
}
