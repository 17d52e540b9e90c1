//! One sweeper pass under the store's run lock: the work the local server's background loops
//! do (requeue expired leases, reconcile tasks the queue lost, relay the outbox, send due
//! webhooks, and with `SPLAI_JOB_TTL` prune jobs past it), for a deployment that runs it on a
//! schedule instead: the Lambda `sweeper` function every minute, or cron. Copies started at
//! once run one at a time: a pass takes the `sweeper` lock in the store, and a copy that finds
//! it held does nothing. A copy that dies holding it loses it after `hold`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use splai_shared::engine::Engine;

use crate::retention::Retention;
use crate::webhooks::deliver::Deliverer;

/// The name of the lock a pass holds.
pub const LOCK: &str = "sweeper";

/// What one invocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SweepOutcome {
    /// This copy held the lock and swept.
    Swept {
        /// Expired leases requeued.
        requeued: usize,
        /// Expired leases on their last attempt, dead-lettered.
        dead_lettered: usize,
        /// Outbox entries moved to the queue.
        relayed: usize,
        /// Tasks the queue had lost, enqueued again.
        reconciled: usize,
        /// Webhook deliveries answered 2xx.
        webhooks_delivered: usize,
        /// Webhook deliveries that failed and are due again later.
        webhooks_retrying: usize,
        /// Webhook deliveries that failed for the last time.
        webhooks_failed: usize,
        /// Terminal jobs past `SPLAI_JOB_TTL` deleted, with their artifacts (0 without a TTL).
        pruned: usize,
    },
    /// Another copy holds the lock; nothing was done.
    Skipped,
}

/// Runs sweeper passes on one engine.
pub struct Sweeper {
    engine: Arc<Engine>,
    deliverer: Arc<Deliverer>,
    hold: Duration,
    retention: Option<Retention>,
}

impl Sweeper {
    /// A sweeper whose passes hold the lock for at most `hold` (longer than a pass can take:
    /// the function's timeout).
    pub fn new(engine: Arc<Engine>, deliverer: Arc<Deliverer>, hold: Duration) -> Self {
        Self {
            engine,
            deliverer,
            hold,
            retention: None,
        }
    }

    /// Also prunes jobs past their TTL on every pass (`SPLAI_JOB_TTL`).
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// One pass, if no other copy is running one.
    ///
    /// # Errors
    /// The store or the queue failed; what was done stays done, and the next pass goes on.
    pub async fn run_once(&self) -> anyhow::Result<SweepOutcome> {
        let locks = &self.engine.backends().locks;
        let holder = format!("sweep-{}", uuid::Uuid::now_v7());
        let now = self.engine.now();
        if !locks.try_lock(LOCK, &holder, now, now + self.hold).await? {
            return Ok(SweepOutcome::Skipped);
        }
        let pass = async {
            let swept = self.engine.sweep().await?;
            let hooks = self.deliverer.deliver_due().await?;
            let pruned = match &self.retention {
                Some(r) => r.prune_once(&self.engine).await?,
                None => 0,
            };
            anyhow::Ok(SweepOutcome::Swept {
                requeued: swept.requeued,
                dead_lettered: swept.dead_lettered,
                relayed: swept.relayed,
                reconciled: swept.reconciled,
                webhooks_delivered: hooks.delivered,
                webhooks_retrying: hooks.retrying,
                webhooks_failed: hooks.failed,
                pruned,
            })
        }
        .await;
        if let Err(e) = locks.unlock(LOCK, &holder).await {
            // It lapses by itself after `hold`.
            tracing::warn!(error = %e, "could not release the sweeper lock");
        }
        pass
    }
}
