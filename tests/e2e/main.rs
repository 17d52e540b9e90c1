//! End-to-end tests against real `splai` processes.

mod cli;
mod durability;

use std::time::Duration;

/// Waits (bounded) for a condition that the server will make true.
pub async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}
