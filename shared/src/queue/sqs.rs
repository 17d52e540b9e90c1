//! SQS lease queue (`SPLAI_QUEUE=sqs`), fed through the store's outbox like Redis.
//!
//! Queues under `SPLAI_SQS_QUEUE_PREFIX` (default `splai`): one standard queue per priority
//! class, `<prefix>-interactive`, `<prefix>-standard`, `<prefix>-batch`, each with a redrive
//! policy to the dead-letter queue `<prefix>-dead` ([`MAX_RECEIVE_COUNT`]). A message is one
//! entry as JSON, sent with the tenant as its message group id (fairness between tenants on
//! SQS fair queues; moto accepts and ignores it). Retention is set to 14 days when the queues
//! are created here.
//!
//! How each promise of [`LeaseQueue`] maps onto SQS:
//!
//! - **claim**: receive from the classes in order (interactive first), 10 per call, with the
//!   lease as the visibility timeout; within one receive, entries are ordered by their ready
//!   time (SQS standard queues are not FIFO, so order is best effort). When nothing is
//!   claimable and the engine allows a wait, the three queues are long-polled together
//!   ([`claim_waiting`](LeaseQueue::claim_waiting), up to 20 s), so an idle claimer costs three
//!   requests per 20 s; what the slower polls bring back after the first has answered is
//!   handed back.
//! - **attempts**: a message records the deliveries before it was sent; a receive is delivery
//!   `attempt + ApproximateReceiveCount`. Nacks and expired leases count (the message comes
//!   back with its count raised); a hand-back does not, because it is sent again as a new
//!   message with the count taken back, then the old one deleted.
//! - **the lease id** carries the class, the receipt handle and the entry as delivered, so any
//!   gateway instance can renew (ChangeMessageVisibility), ack (delete), nack (visibility set to
//!   the backoff), release or dead-letter it without state of its own.
//! - **capability filtering**: SQS cannot filter, so an entry the worker may not run
//!   (`Requirements::admit`) is handed back at once. A fleet of different workers on one
//!   prefix pays a receive, a send and a delete for each miss: give pools their own prefix.
//! - **replace on enqueue, discard, holds**: SQS cannot find a message by task. Enqueue adds a
//!   message (a second one for a task is a duplicate), discard does nothing, and `holds`
//!   answers "not held", so the reconciliation sweep re-sends a ready task that waited
//!   `SPLAI_RECONCILE_AFTER_SECONDS` and expires a task whose lease has been over that long.
//!   All of that is safe because the store, not the queue, decides: the engine acks away a
//!   claimed entry whose task is not runnable (finished, canceled, or running on a live lease).
//! - **expiry**: SQS itself makes a message visible again when its lease runs out, and the next
//!   claim takes the task over (`rules::start` accepts a task whose lease ran out), so `expire`
//!   has nothing to report. A message delivered again after its last allowed attempt expired
//!   is moved to the dead letters by the claim that sees it; the store's task is failed by the
//!   reconciliation (not by the next sweep as with Redis).
//! - **dead letters** live in `<prefix>-dead`, with the reason in the body (none for a message
//!   the redrive moved). Listing receives the whole queue (hidden for 30 s while it is read,
//!   then made visible again) and sorts it by death time; requeue sends the entry back to its
//!   class with its attempts reset, then deletes the dead letter.
//! - **depth** comes from the approximate counts of `GetQueueAttributes`; `leased` counts
//!   in-flight messages, which includes nacked ones waiting out their backoff.
//!
//! Nothing is lost between two calls: every move sends first and deletes second, so a crash in
//! between leaves a duplicate, never a gap. A claim abandoned mid-call (the worker's request
//! dropped) leaves what SQS had already handed out hidden for one lease; that delivery then
//! counts as an attempt, as an expired lease does.
//!
//! Cost (moto, `sqs_requests_per_task_stay_within_budget`): 0.4 SQS requests per task with
//! bulk submits, claims of 10 and batched reports; 4 per task one at a time (a send, a receive
//! of the empty interactive queue and one of the standard queue, a delete).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{LeaseQueue, QueueDepth, QueueError};
use crate::aws::AwsSettings;
use crate::clock::{Clock, SystemClock, to_millis, truncate_millis};
use crate::domain::{
    DeadLetter, Expired, Lease, LeaseId, QueueEntry, TaskRef, Timestamp, WorkerCaps,
};

mod api;
mod record;
mod setup;
#[cfg(test)]
mod tests;

use self::api::{Api, BATCH, Outgoing, Received};
use self::record::{Body, LeaseToken};
pub use self::setup::{MAX_RECEIVE_COUNT, queue_names};

/// Index of the dead-letter queue in the URL list.
const DEAD: usize = 3;
/// How long a dead letter stays hidden while the dead-letter queue is read through.
const SCAN_HIDE: Duration = Duration::from_secs(30);
/// Most dead letters one listing or requeue reads.
const SCAN_MAX: usize = 10_000;

/// A [`LeaseQueue`] on Amazon SQS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqsLeaseQueue {
    api: Arc<Api>,
}

impl SqsLeaseQueue {
    /// The queues named by `settings.sqs_queue_prefix`, created first (with the redrive policy)
    /// when `settings.create_resources` is set.
    ///
    /// # Errors
    /// `Unavailable` naming the queue that is missing, or the call that failed.
    pub async fn open(
        sdk: &aws_config::SdkConfig,
        settings: &AwsSettings,
    ) -> Result<Self, QueueError> {
        let client = aws_sdk_sqs::Client::new(sdk);
        let urls = setup::resolve(
            &client,
            &settings.sqs_queue_prefix,
            settings.create_resources,
        )
        .await?;
        Ok(Self {
            api: Arc::new(Api::new(client, urls)),
        })
    }

    /// SQS requests this queue has made (what AWS bills).
    pub fn requests(&self) -> u64 {
        self.api.requests()
    }

    /// Turns received messages of class `q` into leases; hands back what the worker may not
    /// run and dead-letters what ran out of attempts.
    async fn take(
        &self,
        q: usize,
        msgs: Vec<Received>,
        worker: &WorkerCaps,
        expires_at: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        let mut leases = Vec::new();
        let mut back = Vec::new();
        let mut dead = Vec::new();
        for m in msgs {
            let Some((mut body, entry)) = Body::decode(&m.body)
                .and_then(|b| Ok((b.clone(), b.into_entry()?)))
                .inspect_err(
                    |e| tracing::warn!(error = %e, "SQS message left for the redrive policy"),
                )
                .ok()
            else {
                // Left hidden; after MAX_RECEIVE_COUNT receives the redrive moves it.
                continue;
            };
            body.attempt = body.attempt.saturating_add(m.receives);
            if body.attempt > body.max_attempts {
                // Its last allowed lease ran out: the lease expiry that dead-letters it.
                body.attempt = body.max_attempts;
                body.reason = Some(format!(
                    "lease expired on its last attempt ({} of {})",
                    body.max_attempts, body.max_attempts
                ));
                body.dead_at = Some(to_millis(SystemClock.now()));
                dead.push((body, m.handle));
                continue;
            }
            let entry = QueueEntry {
                attempt: body.attempt,
                ..entry
            };
            if !entry.requirements.admit(worker) {
                back.push((body, m.handle));
                continue;
            }
            let token = LeaseToken {
                class: q,
                handle: m.handle,
                body,
            };
            leases.push(Lease {
                entry,
                lease_id: token.to_lease_id()?,
                worker_id: worker.worker_id.clone(),
                expires_at,
            });
        }
        self.hand_back(q, back).await?;
        self.move_to(DEAD, q, dead).await?;
        leases.sort_by_key(|l| l.entry.not_before);
        Ok(leases)
    }

    /// Sends deliveries back uncounted (as new messages, the attempt taken back), then deletes
    /// the received ones.
    async fn hand_back(&self, q: usize, items: Vec<(Body, String)>) -> Result<(), QueueError> {
        let items = items
            .into_iter()
            .map(|(mut b, h)| {
                b.attempt = b.attempt.saturating_sub(1);
                (b, h)
            })
            .collect();
        self.move_to(q, q, items).await
    }

    /// Sends `items` to queue `to`, then deletes them from queue `from`.
    async fn move_to(
        &self,
        to: usize,
        from: usize,
        items: Vec<(Body, String)>,
    ) -> Result<(), QueueError> {
        if items.is_empty() {
            return Ok(());
        }
        let msgs: Vec<Outgoing> = items.iter().map(|(b, _)| outgoing(b, to)).collect();
        self.api.send(to, &msgs).await?;
        let handles: Vec<&str> = items.iter().map(|(_, h)| h.as_str()).collect();
        self.api.delete(from, &handles).await
    }

    /// Long-polls the three classes together; the first that brings entries the worker may run
    /// answers, and what the others bring later is handed back in the background.
    async fn long_poll(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        wait: Duration,
        started: std::time::Instant,
        now: Timestamp,
    ) -> Result<Vec<Lease>, QueueError> {
        let mut polls: FuturesUnordered<_> = (0..3)
            .map(|q| {
                let api = self.api.clone();
                async move { (q, api.receive(q, max, lease_for, wait).await) }
            })
            .collect();
        let mut out = Ok(Vec::new());
        while let Some((q, got)) = polls.next().await {
            let msgs = match got {
                Ok(m) => m,
                Err(e) => {
                    out = Err(e);
                    break;
                }
            };
            let expires = truncate_millis(now + started.elapsed() + lease_for);
            let leases = self.take(q, msgs, worker, expires).await?;
            if !leases.is_empty() {
                out = Ok(leases);
                break;
            }
        }
        if !polls.is_empty() {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((q, got)) = polls.next().await {
                    let items = got
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|m| {
                            let mut b = Body::decode(&m.body).ok()?;
                            b.attempt = b.attempt.saturating_add(m.receives);
                            Some((b, m.handle))
                        })
                        .collect();
                    if let Err(e) = me.hand_back(q, items).await {
                        tracing::warn!(error = %e, "handing back a late long poll failed; its messages reappear after the lease");
                    }
                }
            });
        }
        out
    }

    /// Reads the whole dead-letter queue, each letter hidden for [`SCAN_HIDE`] so that the
    /// next receive brings others; the caller makes visible again what it leaves there.
    async fn scan_dead(&self) -> Result<Vec<(Received, Body)>, QueueError> {
        let mut out = Vec::new();
        while out.len() < SCAN_MAX {
            let got = self
                .api
                .receive(DEAD, BATCH, SCAN_HIDE, Duration::ZERO)
                .await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                match Body::decode(&m.body) {
                    Ok(b) => out.push((m, b)),
                    Err(e) => tracing::warn!(error = %e, "undecodable dead letter skipped"),
                }
            }
        }
        Ok(out)
    }

    async fn show_again(&self, letters: &[(Received, Body)]) -> Result<(), QueueError> {
        let items: Vec<(&str, Duration)> = letters
            .iter()
            .map(|(m, _)| (m.handle.as_str(), Duration::ZERO))
            .collect();
        self.api.set_visibility(DEAD, &items).await.map(drop)
    }

    /// Leases grouped by class queue; ids this queue did not make are left out.
    fn by_class<T>(items: impl IntoIterator<Item = (LeaseToken, T)>) -> [Vec<(LeaseToken, T)>; 3] {
        let mut groups: [Vec<_>; 3] = Default::default();
        for (t, x) in items {
            groups[t.class].push((t, x));
        }
        groups
    }
}

/// The message that carries `b` to queue `to`. Never delayed: entries are enqueued when they
/// are ready (a retry's backoff is the nacked message's visibility), and a delay computed from
/// `not_before` would add any clock skew between gateways to every task.
fn outgoing(b: &Body, to: usize) -> Outgoing {
    Outgoing {
        body: b.encode(),
        group: (to != DEAD).then(|| b.tenant().to_owned()),
    }
}

/// How long from now until `t` (zero if past).
fn until(t: Timestamp) -> Duration {
    (t - SystemClock.now()).try_into().unwrap_or(Duration::ZERO)
}

#[async_trait]
impl LeaseQueue for SqsLeaseQueue {
    fn backend_name(&self) -> &'static str {
        "sqs"
    }

    async fn enqueue(&self, entries: &[QueueEntry]) -> Result<(), QueueError> {
        let mut by_class: [Vec<Outgoing>; 3] = Default::default();
        for e in entries {
            let b = Body::of(e);
            by_class[b.class()].push(outgoing(&b, b.class()));
        }
        for (q, msgs) in by_class.iter().enumerate() {
            if !msgs.is_empty() {
                self.api.send(q, msgs).await?;
            }
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
        self.claim_waiting(worker, max, lease_for, now, Duration::ZERO)
            .await
    }

    #[tracing::instrument(skip_all, fields(max))]
    async fn claim_waiting(
        &self,
        worker: &WorkerCaps,
        max: usize,
        lease_for: Duration,
        now: Timestamp,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        for q in 0..3 {
            while out.len() < max {
                let want = (max - out.len()).min(BATCH);
                let got = self.api.receive(q, want, lease_for, Duration::ZERO).await?;
                let full = got.len() == want;
                let expires = truncate_millis(now + started.elapsed() + lease_for);
                let leases = self.take(q, got, worker, expires).await?;
                let progress = !leases.is_empty();
                out.extend(leases);
                // A short batch means the class is drained; one with nothing for this worker
                // would only come back again.
                if !full || !progress {
                    break;
                }
            }
        }
        if out.is_empty() && max > 0 && api::wait_secs(wait) > 0 {
            out = self
                .long_poll(worker, max.min(BATCH), lease_for, wait, started, now)
                .await?;
        }
        Ok(out)
    }

    async fn renew(
        &self,
        leases: &[LeaseId],
        until_at: Timestamp,
    ) -> Result<Vec<LeaseId>, QueueError> {
        let groups = Self::by_class(
            leases
                .iter()
                .filter_map(|l| Some((LeaseToken::parse(l)?, l.clone()))),
        );
        let mut held = Vec::new();
        let d = until(until_at);
        for (q, group) in groups.iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let items: Vec<(&str, Duration)> =
                group.iter().map(|(t, _)| (t.handle.as_str(), d)).collect();
            let ok = self.api.set_visibility(q, &items).await?;
            held.extend(
                group
                    .iter()
                    .zip(ok)
                    .filter(|(_, ok)| *ok)
                    .map(|((_, l), _)| l.clone()),
            );
        }
        Ok(leases
            .iter()
            .filter(|l| held.contains(l))
            .cloned()
            .collect())
    }

    async fn ack(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let groups = Self::by_class(
            leases
                .iter()
                .filter_map(|l| Some((LeaseToken::parse(l)?, ()))),
        );
        for (q, group) in groups.iter().enumerate() {
            if !group.is_empty() {
                let handles: Vec<&str> = group.iter().map(|(t, _)| t.handle.as_str()).collect();
                self.api.delete(q, &handles).await?;
            }
        }
        Ok(())
    }

    async fn nack(&self, leases: &[(LeaseId, Timestamp)]) -> Result<(), QueueError> {
        let groups = Self::by_class(
            leases
                .iter()
                .filter_map(|(l, at)| Some((LeaseToken::parse(l)?, *at))),
        );
        for (q, group) in groups.iter().enumerate() {
            if !group.is_empty() {
                let items: Vec<(&str, Duration)> = group
                    .iter()
                    .map(|(t, at)| (t.handle.as_str(), until(*at)))
                    .collect();
                self.api.set_visibility(q, &items).await?;
            }
        }
        Ok(())
    }

    async fn release(&self, leases: &[LeaseId]) -> Result<(), QueueError> {
        let groups = Self::by_class(
            leases
                .iter()
                .filter_map(|l| Some((LeaseToken::parse(l)?, ()))),
        );
        for (q, group) in groups.into_iter().enumerate() {
            let items = group
                .into_iter()
                .map(|(t, ())| (t.body, t.handle))
                .collect();
            self.hand_back(q, items).await?;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        leases: &[(LeaseId, String)],
        now: Timestamp,
    ) -> Result<(), QueueError> {
        let groups = Self::by_class(
            leases
                .iter()
                .filter_map(|(l, why)| Some((LeaseToken::parse(l)?, why.clone()))),
        );
        for (q, group) in groups.into_iter().enumerate() {
            let items = group
                .into_iter()
                .map(|(mut t, why)| {
                    t.body.reason = Some(why);
                    t.body.dead_at = Some(to_millis(now));
                    (t.body, t.handle)
                })
                .collect();
            self.move_to(DEAD, q, items).await?;
        }
        Ok(())
    }

    async fn expire(&self, _now: Timestamp) -> Result<Vec<Expired>, QueueError> {
        // SQS expires leases itself (the message becomes visible); see the module docs.
        Ok(Vec::new())
    }

    async fn discard(&self, _tasks: &[TaskRef]) -> Result<(), QueueError> {
        // No lookup by task: the entries are acked away when claimed (their job is over).
        Ok(())
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let letters = self.scan_dead().await?;
        self.show_again(&letters).await?;
        let redriven =
            format!("moved by the SQS redrive policy after {MAX_RECEIVE_COUNT} receives");
        let mut dead = letters
            .into_iter()
            .map(|(m, b)| b.into_dead_letter((redriven.clone(), m.sent_ms)))
            .collect::<Result<Vec<_>, _>>()?;
        dead.sort_by_key(|d| d.dead_at);
        dead.truncate(limit);
        Ok(dead)
    }

    async fn requeue_dead(
        &self,
        tasks: &[TaskRef],
        now: Timestamp,
    ) -> Result<Vec<TaskRef>, QueueError> {
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let letters = self.scan_dead().await?;
        let (revive, others): (Vec<_>, Vec<_>) = letters
            .into_iter()
            .partition(|(_, b)| b.task_ref().is_ok_and(|t| tasks.contains(&t)));
        self.show_again(&others).await?;
        let mut found = Vec::new();
        let mut by_class: [Vec<(Body, String)>; 3] = Default::default();
        for (m, mut b) in revive {
            found.extend(b.task_ref().ok());
            b.attempt = 0;
            b.not_before = to_millis(now);
            b.reason = None;
            b.dead_at = None;
            by_class[b.class()].push((b, m.handle));
        }
        for (q, items) in by_class.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            let msgs: Vec<Outgoing> = items.iter().map(|(b, _)| outgoing(b, q)).collect();
            self.api.send(q, &msgs).await?;
            let handles: Vec<&str> = items.iter().map(|(_, h)| h.as_str()).collect();
            self.api.delete(DEAD, &handles).await?;
        }
        Ok(tasks
            .iter()
            .filter(|t| found.contains(t))
            .cloned()
            .collect())
    }

    async fn holds(&self, tasks: &[TaskRef]) -> Result<Vec<bool>, QueueError> {
        // Not knowable on SQS; "not held" lets the reconciliation repair (module docs).
        Ok(vec![false; tasks.len()])
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        use QueueAttributeName::{
            ApproximateNumberOfMessages, ApproximateNumberOfMessagesDelayed,
            ApproximateNumberOfMessagesNotVisible,
        };
        let names = [
            ApproximateNumberOfMessages,
            ApproximateNumberOfMessagesDelayed,
            ApproximateNumberOfMessagesNotVisible,
        ];
        let mut d = QueueDepth::default();
        for q in 0..4 {
            let n = self.api.counts(q, &names).await?;
            let (visible, delayed, in_flight) = (n[0], n[1], n[2]);
            match q {
                0 => d.interactive = visible + delayed,
                1 => d.standard = visible + delayed,
                2 => d.batch = visible + delayed,
                _ => d.dead = visible + delayed + in_flight,
            }
            if q != DEAD {
                d.leased += in_flight;
            }
        }
        Ok(d)
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.api
            .counts(1, &[QueueAttributeName::ApproximateNumberOfMessages])
            .await
            .map(drop)
    }
}
