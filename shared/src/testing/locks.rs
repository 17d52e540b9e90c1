//! The run-lock contract every store passes: one holder at a time, a holder may take its own
//! lock again (renewing it), a lapsed lock goes to the next taker, and unlocking gives up
//! only the caller's own lock.

use crate::clock::from_millis;
use crate::domain::Timestamp;
use crate::store::RunLocks;

/// 2026-01-01T00:00:00Z plus `ms`.
fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

/// The whole contract on one store.
pub async fn one_holder_at_a_time<L: RunLocks + ?Sized>(locks: &L) {
    assert!(
        locks
            .try_lock("sweeper", "a", at(0), at(60_000))
            .await
            .unwrap()
    );
    assert!(
        !locks
            .try_lock("sweeper", "b", at(1_000), at(61_000))
            .await
            .unwrap(),
        "held by a"
    );
    assert!(
        locks
            .try_lock("other", "b", at(1_000), at(61_000))
            .await
            .unwrap(),
        "locks are by name"
    );
    assert!(
        locks
            .try_lock("sweeper", "a", at(2_000), at(90_000))
            .await
            .unwrap(),
        "a renews its own"
    );
    assert!(
        !locks
            .try_lock("sweeper", "b", at(70_000), at(130_000))
            .await
            .unwrap(),
        "the renewal moved the deadline"
    );
    assert!(
        locks
            .try_lock("sweeper", "b", at(90_000), at(150_000))
            .await
            .unwrap(),
        "lapsed at its deadline"
    );
    locks.unlock("sweeper", "a").await.unwrap();
    assert!(
        !locks
            .try_lock("sweeper", "c", at(91_000), at(151_000))
            .await
            .unwrap(),
        "a's unlock left b's lock alone"
    );
    locks.unlock("sweeper", "b").await.unwrap();
    assert!(
        locks
            .try_lock("sweeper", "c", at(92_000), at(152_000))
            .await
            .unwrap(),
        "free once b unlocked"
    );
}
