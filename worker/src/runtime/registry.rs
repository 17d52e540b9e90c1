//! The tasks this worker holds leases for: running, or finished and waiting for their report
//! to be delivered. Heartbeats renew exactly these leases.

use std::collections::HashMap;
use std::sync::Mutex;

use splai_shared::domain::TaskRef;
use splai_shared::engine::Assignment;
use tokio_util::sync::CancellationToken;

use crate::client::HeldLease;

/// Why a running task was stopped from outside its executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its job was canceled or failed: drop the work, report nothing.
    Canceled,
    /// The gateway no longer counts the lease as ours: drop the work, report nothing.
    Lost,
    /// Shutdown's grace period ran out: hand the lease back so the task is requeued at once.
    HandBack,
}

struct Held {
    lease: HeldLease,
    cancel: CancellationToken,
    stop: Option<Stop>,
    /// The executor finished; only the report is outstanding.
    reporting: bool,
}

/// Leases held, by task.
#[derive(Default)]
pub(crate) struct Registry {
    // A std mutex: every critical section is a short map operation that never awaits.
    held: Mutex<HashMap<TaskRef, Held>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskRef, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a claimed task; its executor watches the returned token.
    pub(crate) fn insert(&self, a: &Assignment) -> (HeldLease, CancellationToken) {
        let lease = HeldLease {
            job_id: a.job_id.clone(),
            task_id: a.task_id.clone(),
            lease_id: a.lease_id.clone(),
        };
        let cancel = CancellationToken::new();
        let held = Held {
            lease: lease.clone(),
            cancel: cancel.clone(),
            stop: None,
            reporting: false,
        };
        self.lock().insert(task_ref(&lease), held);
        (lease, cancel)
    }

    /// Every lease held, for a heartbeat.
    pub(crate) fn leases(&self) -> Vec<HeldLease> {
        self.lock().values().map(|h| h.lease.clone()).collect()
    }

    /// How many tasks are still running (not just reporting).
    pub(crate) fn running(&self) -> usize {
        self.lock().values().filter(|h| !h.reporting).count()
    }

    /// Stops a running task. A task that already finished keeps its outstanding report,
    /// which the gateway will treat as stale.
    pub(crate) fn stop(&self, task: &TaskRef, why: Stop) {
        if let Some(h) = self.lock().get_mut(task)
            && !h.reporting
        {
            h.stop.get_or_insert(why);
            h.cancel.cancel();
        }
    }

    /// Stops every running task with `why`; returns how many.
    pub(crate) fn stop_all_running(&self, why: Stop) -> usize {
        let mut n = 0;
        for h in self.lock().values_mut().filter(|h| !h.reporting) {
            h.stop.get_or_insert(why);
            h.cancel.cancel();
            n += 1;
        }
        n
    }

    /// Why a task was stopped, if it was.
    pub(crate) fn stop_reason(&self, lease: &HeldLease) -> Option<Stop> {
        self.lock().get(&task_ref(lease)).and_then(|h| h.stop)
    }

    /// The executor finished; the lease is held until the report is delivered.
    pub(crate) fn mark_reporting(&self, lease: &HeldLease) {
        if let Some(h) = self.lock().get_mut(&task_ref(lease)) {
            h.reporting = true;
        }
    }

    /// Forgets a lease (reported, released, canceled or lost).
    pub(crate) fn remove(&self, lease: &HeldLease) {
        let mut held = self.lock();
        // A newer lease on the same task (claimed again after expiry) is not this one's.
        if held
            .get(&task_ref(lease))
            .is_some_and(|h| h.lease.lease_id == lease.lease_id)
        {
            held.remove(&task_ref(lease));
        }
    }

    /// Leases stopped for hand-back.
    pub(crate) fn handed_back(&self) -> Vec<HeldLease> {
        self.lock()
            .values()
            .filter(|h| h.stop == Some(Stop::HandBack))
            .map(|h| h.lease.clone())
            .collect()
    }
}

fn task_ref(lease: &HeldLease) -> TaskRef {
    TaskRef {
        job_id: lease.job_id.clone(),
        task_id: lease.task_id.clone(),
    }
}
