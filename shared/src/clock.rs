//! Time source. The engine never reads the system clock directly, so tests can move time.

use std::sync::Mutex;
use std::time::Duration;

use crate::domain::Timestamp;

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant, truncated to whole milliseconds (the precision every backend keeps).
    fn now(&self) -> Timestamp;
}

/// Truncates to whole milliseconds so that values survive a round trip through any backend.
pub fn truncate_millis(t: Timestamp) -> Timestamp {
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    from_millis(ms as i64)
}

/// Milliseconds since the Unix epoch.
pub fn to_millis(t: Timestamp) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The instant `ms` milliseconds after the Unix epoch (saturating at the representable range).
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        truncate_millis(Timestamp::now_utc())
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock stopped at the current real time.
    pub fn new() -> Self {
        Self(Mutex::new(SystemClock.now()))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        // The lock is never held across a panic-prone call, so poisoning cannot happen.
        let mut now = self.0.lock().expect("clock lock poisoned");
        *now = truncate_millis(*now + by);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().expect("clock lock poisoned")
    }
}
