//! Engine counters. Cheap atomics read by the metrics endpoint; labels come later.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Monotonic counters of engine activity.
        #[derive(Debug, Default)]
        pub struct Counters {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub $name: AtomicU64,
            )*
        }

        impl Counters {
            /// Every counter by name.
            pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
                BTreeMap::from([$((stringify!($name), self.$name.load(Ordering::Relaxed))),*])
            }
        }
    };
}

counters!(
    jobs_submitted_total,
    jobs_completed_total,
    jobs_failed_total,
    jobs_canceled_total,
    queue_claimed_total,
    queue_acked_total,
    queue_nacked_total,
    queue_expired_requeued_total,
    dead_letter_total,
    dead_letter_requeued_total,
    reports_duplicate_total,
    reports_stale_total,
    lease_renewals_total,
    scheduler_assignment_errors_total,
);

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}
