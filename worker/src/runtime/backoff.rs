//! Exponential backoff with jitter for reconnecting to the gateway.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each jittered to 50–100 %.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `base`, never exceeds `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// The delay before the next try; each call doubles the next one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        exp.min(self.max).mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }

    /// Failures since the last success.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// After a success.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delays grow, are capped, and restart after a success.
    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[3] >= Duration::from_millis(400) && d[3] <= Duration::from_millis(800));
        assert!(d[5] <= Duration::from_secs(1));
        assert_eq!(b.failures(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
