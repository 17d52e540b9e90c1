//! In-memory lease queue for tests and `SPLAI_QUEUE=memory`. Nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::clock::to_millis;
use crate::domain::{
    DeadLetter, Expired, ExpiryOutcome, Lease, LeaseId, QueueEntry, TaskRef, Timestamp, WorkerCaps,
};

enum SlotState {
    Pending,
    Leased(Lease),
    Dead {
        reason: String,
        at: Timestamp,
        dead_seq: u64,
    },
}

struct Slot {
    entry: QueueEntry,
    seq: u64,
    state: SlotState,
}

#[derive(Default)]
struct State {
    slots: HashMap<TaskRef, Slot>,
    /// Pending entries in claim order: (priority rank, FIFO seq).
    pending: BTreeSet<(i64, u64, TaskRef)>,
    leases: HashMap<LeaseId, TaskRef>,
    /// Leases by expiry, for `expire` without a scan.
    expiries: BTreeSet<(i64, LeaseId)>,
    dead: BTreeMap<u64, TaskRef>,
    next_seq: u64,
}

impl State {
    /// Takes the slot out of every index; the caller re-files it.
    fn unfile(&mut self, task: &TaskRef) -> Option<Slot> {
        let slot = self.slots.remove(task)?;
        match &slot.state {
            SlotState::Pending => {
                self.pending
                    .remove(&(slot.entry.priority.rank(), slot.seq, task.clone()));
            }
            SlotState::Leased(l) => {
                self.leases.remove(&l.lease_id);
                self.expiries
                    .remove(&(to_millis(l.expires_at), l.lease_id.clone()));
            }
            SlotState::Dead { dead_seq, .. } => {
                self.dead.remove(dead_seq);
            }
        }
        Some(slot)
    }

    fn file(&mut self, slot: Slot) {
        let task = slot.entry.task_ref();
        match &slot.state {
            SlotState::Pending => {
                self.pending
                    .insert((slot.entry.priority.rank(), slot.seq, task.clone()));
            }
            SlotState::Leased(l) => {
                self.leases.insert(l.lease_id.clone(), task.clone());
                self.expiries
                    .insert((to_millis(l.expires_at), l.lease_id.clone()));
            }
            SlotState::Dead { dead_seq, .. } => {
                self.dead.insert(*dead_seq, task.clone());
            }
        }
        self.slots.insert(task, slot);
    }

    fn take_leased(&mut self, lease: &LeaseId) -> Option<(Slot, Lease)> {
        let task = self.leases.get(lease)?.clone();
        let mut slot = self.unfile(&task)?;
        match std::mem::replace(&mut slot.state, SlotState::Pending) {
            SlotState::Leased(l) => Some((slot, l)),
            // `leases` only ever points at leased slots.
            _ => None,
        }
    }

    fn next(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

/// A lease queue held in process memory.
#[derive(Default)]
pub struct MemoryLeaseQueue {
    // A std mutex: critical sections are short map operations and never await.
    state: Mutex<State>,
}

impl MemoryLeaseQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl LeaseQueue for MemoryLeaseQueue {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError> {
        let mut s = self.lock();
        for entry in entries {
            // Keep the FIFO position of a task that is re-enqueued.
            let seq = match s.unfile(&entry.task_ref()) {
                Some(old) => old.seq,
                None => s.next(),
            };
            s.file(Slot {
                entry: entry.clone(),
                seq,
                state: SlotState::Pending,
            });
        }
        Ok(())
    }

    async fn claim(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        let mut s = self.lock();
        let picked: Vec<TaskRef> = s
            .pending
            .iter()
            .filter(|(_, _, t)| {
                let e = &s.slots[t].entry;
                e.not_before <= now && e.requirements.admit(worker)
            })
            .take(max)
            .map(|(_, _, t)| t.clone())
            .collect();
        let expires_at = now + lease_for;
        let mut out = Vec::with_capacity(picked.len());
        for task in picked {
            let Some(mut slot) = s.unfile(&task) else {
                continue;
            };
            slot.entry.attempt += 1;
            let lease = Lease {
                entry: slot.entry.clone(),
                lease_id: LeaseId::generate(),
                worker_id: worker.worker_id.clone(),
                expires_at,
            };
            slot.state = SlotState::Leased(lease.clone());
            s.file(slot);
            out.push(lease);
        }
        Ok(out)
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        let mut s = self.lock();
        let mut renewed = Vec::new();
        for id in leases {
            let Some((mut slot, mut lease)) = s.take_leased(id) else {
                continue;
            };
            lease.expires_at = until;
            slot.state = SlotState::Leased(lease);
            s.file(slot);
            renewed.push(id.clone());
        }
        Ok(renewed)
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let mut s = self.lock();
        for id in leases {
            s.take_leased(id);
        }
        Ok(())
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        let mut s = self.lock();
        for (id, retry_at) in leases {
            let Some((mut slot, _)) = s.take_leased(id) else {
                continue;
            };
            slot.entry.not_before = *retry_at;
            slot.state = SlotState::Pending;
            s.file(slot);
        }
        Ok(())
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let mut s = self.lock();
        for id in leases {
            let Some((mut slot, _)) = s.take_leased(id) else {
                continue;
            };
            slot.entry.attempt = slot.entry.attempt.saturating_sub(1);
            slot.state = SlotState::Pending;
            s.file(slot);
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let mut s = self.lock();
        for (id, reason) in leases {
            let Some((mut slot, _)) = s.take_leased(id) else {
                continue;
            };
            let dead_seq = s.next();
            slot.state = SlotState::Dead {
                reason: reason.clone(),
                at: now,
                dead_seq,
            };
            s.file(slot);
        }
        Ok(())
    }

    async fn expire(&self, now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        let mut s = self.lock();
        let now_ms = to_millis(now);
        let due: Vec<LeaseId> = s
            .expiries
            .iter()
            .take_while(|(ms, _)| *ms <= now_ms)
            .map(|(_, id)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            let Some((mut slot, lease)) = s.take_leased(&id) else {
                continue;
            };
            let outcome = if slot.entry.attempt >= slot.entry.max_attempts {
                let dead_seq = s.next();
                slot.state = SlotState::Dead {
                    reason: "lease expired".into(),
                    at: now,
                    dead_seq,
                };
                ExpiryOutcome::DeadLettered
            } else {
                slot.state = SlotState::Pending;
                ExpiryOutcome::Requeued
            };
            s.file(slot);
            out.push(Expired { lease, outcome });
        }
        Ok(out)
    }

    async fn discard(&self, tasks: &[TaskRef]) -> Result<(), QueueError> {
        let mut s = self.lock();
        for t in tasks {
            s.unfile(t);
        }
        Ok(())
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let s = self.lock();
        Ok(s.dead
            .values()
            .take(limit)
            .filter_map(|t| match &s.slots[t].state {
                SlotState::Dead { reason, at, .. } => Some(DeadLetter {
                    entry: s.slots[t].entry.clone(),
                    reason: reason.clone(),
                    dead_at: *at,
                }),
                _ => None,
            })
            .collect())
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        let mut s = self.lock();
        let mut out = Vec::new();
        for t in tasks {
            if !matches!(
                s.slots.get(t).map(|x| &x.state),
                Some(SlotState::Dead { .. })
            ) {
                continue;
            }
            let Some(mut slot) = s.unfile(t) else {
                continue;
            };
            slot.entry.attempt = 0;
            slot.entry.not_before = now;
            slot.state = SlotState::Pending;
            s.file(slot);
            out.push(t.clone());
        }
        Ok(out)
    }

    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        let s = self.lock();
        Ok(tasks.iter().map(|t| s.slots.contains_key(t)).collect())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let s = self.lock();
        let mut d = QueueDepth {
            leased: s.leases.len() as u64,
            dead: s.dead.len() as u64,
            ..Default::default()
        };
        for (_, _, t) in &s.pending {
            d.add_pending(s.slots[t].entry.priority, 1);
        }
        Ok(d)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
