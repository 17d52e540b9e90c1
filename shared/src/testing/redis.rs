//! The Redis the tests run against (see [`services`](super::services)), one key prefix per
//! test.

use super::services::Service;
use crate::queue::redis::RedisLeaseQueue;

/// A test's own corner of Redis: a fresh key prefix, whose keys are deleted on drop.
#[derive(Debug)]
pub struct TestRedis {
    /// The server's URL.
    pub url: String,
    /// The key prefix (`splai-test:<uuid>`), unique to this test.
    pub key: String,
}

impl TestRedis {
    /// The test Redis (found as [`services`](super::services) says) with a fresh prefix, or
    /// `None` after printing why `test` is skipped.
    ///
    /// # Panics
    /// When no Redis is found and `CI` is set: a missing service is never silently green.
    pub async fn find(test: &str) -> Option<Self> {
        let url = super::services::locate(Service::Redis, test)?;
        Some(Self {
            url,
            key: format!("splai-test:{}", uuid::Uuid::now_v7()),
        })
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
