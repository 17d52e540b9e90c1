//! Behaviour of the SQLite lease queue on real temp files.

use std::collections::BTreeSet;

use tempfile::TempDir;

use super::*;
use crate::clock::from_millis;
use crate::domain::{JobId, Requirements, TaskId, TenantId, WorkerId};
use crate::queue::memory::MemoryLeaseQueue;

const LEASE: Duration = Duration::from_secs(10);

fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

fn an_entry(task: &str, priority: Priority) -> QueueEntry {
    QueueEntry {
        job_id: JobId::parse("job-1").unwrap(),
        task_id: TaskId::parse(task).unwrap(),
        tenant: TenantId::parse("acme").unwrap(),
        priority,
        requirements: Requirements::default(),
        attempt: 0,
        max_attempts: 2,
        not_before: at(0),
    }
}

fn gpu_entry(task: &str) -> QueueEntry {
    QueueEntry {
        requirements: Requirements {
            gpu: true,
            ..Default::default()
        },
        ..an_entry(task, Priority::Standard)
    }
}

fn cpu() -> WorkerCaps {
    WorkerCaps {
        worker_id: Some(WorkerId::parse("w-cpu").unwrap()),
        ..Default::default()
    }
}

fn names(leases: &[Lease]) -> Vec<String> {
    leases.iter().map(|l| l.entry.task_id.to_string()).collect()
}

async fn a_queue() -> (TempDir, SqliteLeaseQueue) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDb::open(&dir.path().join("q.db")).await.unwrap();
    (dir, SqliteLeaseQueue::new(db))
}

/// Claims take higher priority classes first and FIFO within a class; re-enqueue keeps the
/// original position.
#[tokio::test]
async fn claim_orders_by_priority_then_fifo() {
    let (_dir, q) = a_queue().await;
    q.enqueue(&[
        an_entry("b1", Priority::Batch),
        an_entry("s1", Priority::Standard),
        an_entry("i1", Priority::Interactive),
        an_entry("s2", Priority::Standard),
    ])
    .await
    .unwrap();
    q.enqueue(&[an_entry("s1", Priority::Standard)])
        .await
        .unwrap();
    let leases = q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap();
    assert_eq!(names(&leases), ["i1", "s1", "s2", "b1"]);
    assert!(
        leases
            .iter()
            .all(|l| l.entry.attempt == 1 && l.expires_at == at(10_000))
    );
    assert_eq!(leases[0].worker_id, cpu().worker_id);
    let ids: BTreeSet<_> = leases.iter().map(|l| l.lease_id.clone()).collect();
    assert_eq!(ids.len(), 4, "each claim gets its own lease id");
    assert!(
        q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap().is_empty(),
        "leased entries are not claimable"
    );
}

/// Entries in backoff are skipped until `not_before`.
#[tokio::test]
async fn claim_skips_entries_before_not_before() {
    let (_dir, q) = a_queue().await;
    let later = QueueEntry {
        not_before: at(5_000),
        ..an_entry("later", Priority::Interactive)
    };
    q.enqueue(&[later, an_entry("now", Priority::Batch)])
        .await
        .unwrap();
    assert_eq!(
        names(&q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap()),
        ["now"]
    );
    assert_eq!(
        names(&q.claim(&cpu(), 10, LEASE, at(5_000)).await.unwrap()),
        ["later"]
    );
}

/// Requirements are hard: gpu, backend, model and target worker must all admit the worker,
/// even when many unclaimable entries sit ahead of a claimable one.
#[tokio::test]
async fn claim_honours_requirements_past_unclaimable_entries() {
    let (_dir, q) = a_queue().await;
    let mut entries: Vec<_> = (0..100)
        .map(|i| gpu_entry(&format!("gpu-{i:03}")))
        .collect();
    let vllm = Requirements {
        backend: Some("vllm".into()),
        model: Some("m".into()),
        ..Default::default()
    };
    entries.push(QueueEntry {
        requirements: vllm,
        ..an_entry("vllm", Priority::Standard)
    });
    let pinned = Requirements {
        worker_id: Some(WorkerId::parse("w-other").unwrap()),
        ..Default::default()
    };
    entries.push(QueueEntry {
        requirements: pinned,
        ..an_entry("pinned", Priority::Standard)
    });
    entries.push(an_entry("plain", Priority::Standard));
    q.enqueue(&entries).await.unwrap();

    assert_eq!(
        names(&q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap()),
        ["plain"]
    );
    let serving = WorkerCaps {
        backends: ["vllm".to_owned()].into(),
        models: ["m".to_owned()].into(),
        ..cpu()
    };
    assert_eq!(
        names(&q.claim(&serving, 5, LEASE, at(0)).await.unwrap()),
        ["vllm"]
    );
    let gpu = WorkerCaps { gpu: true, ..cpu() };
    assert_eq!(q.claim(&gpu, 1000, LEASE, at(0)).await.unwrap().len(), 100);
    let other = WorkerCaps {
        worker_id: Some(WorkerId::parse("w-other").unwrap()),
        ..Default::default()
    };
    assert_eq!(
        names(&q.claim(&other, 5, LEASE, at(0)).await.unwrap()),
        ["pinned"]
    );
}

/// The claim statement walks the claim index in claim order instead of sorting the pending
/// set, and finds the rows it leases by rowid.
#[tokio::test]
async fn claim_uses_the_claim_index() {
    let (_dir, q) = a_queue().await;
    let plan = query_plan(&q, claim::CLAIM);
    assert!(plan.contains("USING INDEX queue_pending"), "{plan}");
    assert!(
        plan.contains("USING INTEGER PRIMARY KEY (rowid=?)"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    let check = query_plan(&q, claim::ANY_CLAIMABLE);
    assert!(check.contains("USING INDEX queue_pending"), "{check}");
}

/// Batch statements seek one index entry per item instead of walking a whole state.
#[tokio::test]
async fn batch_statements_seek_per_item() {
    let (_dir, q) = a_queue().await;
    let by_lease = "USING INTEGER PRIMARY KEY (rowid=?)";
    let by_task = "(job_id=? AND task_id=?)";
    for (sql, seek) in [
        (RENEW, by_lease),
        (ACK, by_lease),
        (NACK, by_lease),
        (BURY, by_lease),
        (REQUEUE, by_lease),
        (RELEASE, by_lease),
        (DISCARD, by_task),
        (REVIVE, by_task),
    ] {
        let plan = query_plan(&q, sql);
        assert!(plan.contains(seek), "{sql}\n{plan}");
        assert!(!plan.contains("SCAN queue_entries"), "{sql}\n{plan}");
    }
}

/// Depth counts each state from its partial index alone.
#[tokio::test]
async fn depth_counts_from_the_partial_indexes() {
    let (_dir, q) = a_queue().await;
    let plan = query_plan(&q, DEPTH);
    for index in ["queue_pending", "queue_leased", "queue_dead"] {
        assert!(plan.contains(&format!("COVERING INDEX {index}")), "{plan}");
    }
}

fn query_plan(q: &SqliteLeaseQueue, sql: &str) -> String {
    crate::store::sqlite::query_plan(&q.db, sql)
}

/// The claim statement's filter gives `Requirements::admit`'s answer for every combination of
/// requirement and capability.
#[tokio::test]
async fn claim_filter_agrees_with_admit() {
    let (_dir, q) = a_queue().await;
    let worker = |id: Option<&str>| id.map(|w| WorkerId::parse(w).unwrap());
    let set = |s: &[&str]| s.iter().map(|&x| x.to_owned()).collect::<BTreeSet<_>>();
    let mut entries = Vec::new();
    for gpu in [false, true] {
        for backend in [None, Some("vllm"), Some("echo")] {
            for model in [None, Some("m"), Some("n")] {
                for target in [None, Some("w-a"), Some("w-b")] {
                    let name = format!("e{}", entries.len());
                    let requirements = Requirements {
                        gpu,
                        backend: backend.map(str::to_owned),
                        model: model.map(str::to_owned),
                        worker_id: worker(target),
                    };
                    entries.push(QueueEntry {
                        requirements,
                        ..an_entry(&name, Priority::Standard)
                    });
                }
            }
        }
    }
    for gpu in [false, true] {
        for backends in [set(&[]), set(&["vllm"]), set(&["vllm", "echo"])] {
            for models in [set(&[]), set(&["n"]), set(&["*"])] {
                for id in [None, Some("w-a")] {
                    let caps = WorkerCaps {
                        worker_id: worker(id),
                        gpu,
                        backends: backends.clone(),
                        models: models.clone(),
                    };
                    q.enqueue(&entries).await.unwrap();
                    let got = q.claim(&caps, 1000, LEASE, at(0)).await.unwrap();
                    let want: Vec<_> = entries
                        .iter()
                        .filter(|e| e.requirements.admit(&caps))
                        .map(|e| e.task_id.to_string())
                        .collect();
                    assert_eq!(names(&got), want, "{caps:?}");
                }
            }
        }
    }
}

/// Renew extends held leases only; ack removes; nack returns to pending with a backoff and
/// keeps the attempt count.
#[tokio::test]
async fn renew_ack_and_nack_act_on_held_leases() {
    let (_dir, q) = a_queue().await;
    q.enqueue(&[
        an_entry("a", Priority::Standard),
        an_entry("b", Priority::Standard),
    ])
    .await
    .unwrap();
    let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
    let (a, b) = (leases[0].lease_id.clone(), leases[1].lease_id.clone());
    let stranger = LeaseId::parse("lease-unknown").unwrap();
    assert_eq!(
        q.renew(&[a.clone(), stranger], at(30_000)).await.unwrap(),
        std::slice::from_ref(&a)
    );
    q.ack(std::slice::from_ref(&a)).await.unwrap();
    assert!(q.renew(&[a], at(40_000)).await.unwrap().is_empty());
    q.nack(&[(b.clone(), at(2_000))]).await.unwrap();
    assert!(q.renew(&[b], at(40_000)).await.unwrap().is_empty());
    assert!(
        q.claim(&cpu(), 5, LEASE, at(1_999))
            .await
            .unwrap()
            .is_empty()
    );
    let again = q.claim(&cpu(), 5, LEASE, at(2_000)).await.unwrap();
    assert_eq!(
        (names(&again), again[0].entry.attempt),
        (vec!["b".to_owned()], 2)
    );
    // The renewed lease outlived the first deadline; only b's expires at 12 s.
    let expired = q.expire(at(12_000)).await.unwrap();
    assert_eq!(expired.len(), 1);
}

/// A released lease goes back to pending at once, in its old FIFO place, without counting
/// the delivery; an unknown or finished lease is ignored.
#[tokio::test]
async fn release_hands_a_delivery_back_uncounted() {
    let (_dir, q) = a_queue().await;
    q.enqueue(&[
        an_entry("a", Priority::Standard),
        an_entry("b", Priority::Standard),
    ])
    .await
    .unwrap();
    let leases = q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap();
    assert_eq!(names(&leases), ["a"]);
    let a = leases[0].lease_id.clone();
    q.release(&[a.clone(), LeaseId::parse("lease-unknown").unwrap()])
        .await
        .unwrap();
    assert!(
        q.renew(std::slice::from_ref(&a), at(1))
            .await
            .unwrap()
            .is_empty()
    );
    let again = q.claim(&cpu(), 2, LEASE, at(1)).await.unwrap();
    assert_eq!(names(&again), ["a", "b"], "a keeps its place ahead of b");
    assert_eq!(
        again[0].entry.attempt, 1,
        "the handed-back delivery did not count"
    );
}

/// Expiry requeues entries with deliveries left and dead-letters exhausted ones.
#[tokio::test]
async fn expire_requeues_or_dead_letters() {
    let (_dir, q) = a_queue().await;
    let once = QueueEntry {
        max_attempts: 1,
        ..an_entry("once", Priority::Standard)
    };
    q.enqueue(&[once, an_entry("twice", Priority::Standard)])
        .await
        .unwrap();
    let leases = q.claim(&cpu(), 5, LEASE, at(0)).await.unwrap();
    assert!(q.expire(at(9_999)).await.unwrap().is_empty());
    let expired = q.expire(at(10_000)).await.unwrap();
    let outcomes: BTreeSet<_> = expired
        .iter()
        .map(|e| format!("{} {:?}", e.lease.entry.task_id, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        ["once DeadLettered".to_owned(), "twice Requeued".to_owned()].into()
    );
    let mut as_claimed: Vec<_> = expired.into_iter().map(|e| e.lease).collect();
    as_claimed.sort_by(|x, y| x.entry.task_id.cmp(&y.entry.task_id));
    assert_eq!(as_claimed, leases, "expiry reports the lease as it was");

    let dead = q.list_dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].entry.task_id.as_str(), dead[0].reason.as_str()),
        ("once", "lease expired")
    );
    assert_eq!((dead[0].entry.attempt, dead[0].dead_at), (1, at(10_000)));
    let again = q.claim(&cpu(), 5, LEASE, at(10_000)).await.unwrap();
    assert_eq!(
        (names(&again), again[0].entry.attempt),
        (vec!["twice".to_owned()], 2)
    );
    let depth = q.depth().await.unwrap();
    assert_eq!(
        depth,
        QueueDepth {
            leased: 1,
            dead: 1,
            ..Default::default()
        }
    );
}

/// Dead letters list oldest first; requeue revives only dead ones with attempts reset.
#[tokio::test]
async fn requeue_dead_resets_attempts() {
    let (_dir, q) = a_queue().await;
    q.enqueue(&[
        an_entry("a", Priority::Standard),
        an_entry("b", Priority::Standard),
        an_entry("c", Priority::Batch),
    ])
    .await
    .unwrap();
    let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
    q.dead_letter(&[(leases[1].lease_id.clone(), "bad input".into())], at(1))
        .await
        .unwrap();
    q.dead_letter(&[(leases[0].lease_id.clone(), "boom".into())], at(2))
        .await
        .unwrap();
    let dead = q.list_dead(10).await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        ["bad input", "boom"]
    );
    assert_eq!(q.list_dead(1).await.unwrap().len(), 1);

    let refs = [
        leases[0].entry.task_ref(),
        an_entry("c", Priority::Batch).task_ref(),
    ];
    assert_eq!(q.requeue_dead(&refs, at(50)).await.unwrap(), refs[..1]);
    let again = q.claim(&cpu(), 5, LEASE, at(50)).await.unwrap();
    assert_eq!(names(&again), ["a", "c"]);
    assert_eq!(
        (again[0].entry.attempt, again[0].entry.not_before),
        (1, at(50))
    );
    assert_eq!(q.list_dead(10).await.unwrap().len(), 1);
}

/// Discard drops entries whatever their state; enqueue of a dead task makes it pending.
#[tokio::test]
async fn discard_drops_entries_in_any_state() {
    let (_dir, q) = a_queue().await;
    let all = ["p", "l", "d"].map(|t| an_entry(t, Priority::Standard));
    q.enqueue(&all).await.unwrap();
    let leases = q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
    q.dead_letter(&[(leases[1].lease_id.clone(), "x".into())], at(0))
        .await
        .unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            standard: 1,
            leased: 1,
            dead: 1,
            ..Default::default()
        }
    );
    q.discard(&all.iter().map(QueueEntry::task_ref).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    q.ack(&[leases[0].lease_id.clone()]).await.unwrap();
    q.enqueue(&all[..1]).await.unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            standard: 1,
            ..Default::default()
        }
    );
}

/// Leased and pending entries survive closing and reopening the file, leases still valid.
#[tokio::test]
async fn entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let q = SqliteLeaseQueue::new(SqliteDb::open(&path).await.unwrap());
    q.enqueue(&[
        an_entry("a", Priority::Standard),
        an_entry("b", Priority::Batch),
    ])
    .await
    .unwrap();
    let held = q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap();
    drop(q);

    let q = SqliteLeaseQueue::new(SqliteDb::open(&path).await.unwrap());
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            batch: 1,
            leased: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        q.renew(&[held[0].lease_id.clone()], at(20_000))
            .await
            .unwrap()
            .len(),
        1
    );
    let expired = q.expire(at(20_000)).await.unwrap();
    assert_eq!(
        expired[0].lease,
        Lease {
            expires_at: at(20_000),
            ..held[0].clone()
        }
    );
}

/// A scripted run of every operation gives the same answers as the memory queue.
#[tokio::test]
async fn behaves_like_the_memory_queue() {
    let (_dir, sql) = a_queue().await;
    let mem = MemoryLeaseQueue::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let workers = [
        cpu(),
        WorkerCaps { gpu: true, ..cpu() },
        WorkerCaps::default(),
    ];
    let mut held: Vec<(LeaseId, LeaseId)> = Vec::new();
    let mut now = 0_i64;
    for step in 0..400 {
        let task = |i: u64| format!("t{i}");
        match next(9) {
            0 | 1 => {
                let mut batch = Vec::new();
                for _ in 0..=next(3) {
                    let i = next(12);
                    let p = Priority::from_rank(next(3) as i64);
                    let mut e = if i % 4 == 0 {
                        gpu_entry(&task(i))
                    } else {
                        an_entry(&task(i), p)
                    };
                    e.not_before = at(now + next(3) as i64 * 1_000);
                    e.max_attempts = 1 + next(2) as u32;
                    batch.push(e);
                }
                sql.enqueue(&batch).await.unwrap();
                mem.enqueue(&batch).await.unwrap();
            }
            2 | 3 => {
                let w = &workers[next(3) as usize];
                let max = next(4) as usize;
                let a = mem.claim(w, max, LEASE, at(now)).await.unwrap();
                let b = sql.claim(w, max, LEASE, at(now)).await.unwrap();
                let strip = |v: &[Lease]| {
                    v.iter()
                        .map(|l| (l.entry.clone(), l.expires_at))
                        .collect::<Vec<_>>()
                };
                assert_eq!(strip(&a), strip(&b), "claim at step {step}");
                held.extend(
                    a.into_iter()
                        .map(|l| l.lease_id)
                        .zip(b.into_iter().map(|l| l.lease_id)),
                );
            }
            4 if !held.is_empty() => {
                let (m, s) = held[next(held.len() as u64) as usize].clone();
                match next(5) {
                    0 => assert_eq!(
                        mem.renew(&[m], at(now + 15_000)).await.unwrap().len(),
                        sql.renew(&[s], at(now + 15_000)).await.unwrap().len()
                    ),
                    1 => {
                        mem.ack(&[m]).await.unwrap();
                        sql.ack(&[s]).await.unwrap();
                    }
                    2 => {
                        mem.nack(&[(m, at(now + 1_000))]).await.unwrap();
                        sql.nack(&[(s, at(now + 1_000))]).await.unwrap();
                    }
                    3 => {
                        mem.release(&[m]).await.unwrap();
                        sql.release(&[s]).await.unwrap();
                    }
                    _ => {
                        mem.dead_letter(&[(m, "x".into())], at(now)).await.unwrap();
                        sql.dead_letter(&[(s, "x".into())], at(now)).await.unwrap();
                    }
                }
            }
            5 => {
                let key = |v: Vec<Expired>| {
                    v.into_iter()
                        .map(|e| format!("{:?}", (e.lease.entry, e.lease.expires_at, e.outcome)))
                        .collect::<BTreeSet<_>>()
                };
                let (a, b) = (
                    mem.expire(at(now)).await.unwrap(),
                    sql.expire(at(now)).await.unwrap(),
                );
                assert_eq!(key(a), key(b), "expire at step {step}");
            }
            6 => {
                let refs: Vec<_> = (0..2)
                    .map(|_| an_entry(&task(next(12)), Priority::Batch).task_ref())
                    .collect();
                if next(2) == 0 {
                    mem.discard(&refs).await.unwrap();
                    sql.discard(&refs).await.unwrap();
                } else {
                    let a = mem.requeue_dead(&refs, at(now)).await.unwrap();
                    assert_eq!(
                        a,
                        sql.requeue_dead(&refs, at(now)).await.unwrap(),
                        "requeue at {step}"
                    );
                }
            }
            _ => now += next(6) as i64 * 1_000,
        }
        assert_eq!(
            mem.depth().await.unwrap(),
            sql.depth().await.unwrap(),
            "depth at step {step}"
        );
        let dead = |v: Vec<DeadLetter>| {
            v.into_iter()
                .map(|d| format!("{:?}", (d.entry, d.reason, d.dead_at)))
                .collect::<BTreeSet<_>>()
        };
        let (a, b) = (
            mem.list_dead(100).await.unwrap(),
            sql.list_dead(100).await.unwrap(),
        );
        assert_eq!(dead(a), dead(b), "dead letters at step {step}");
    }
}

/// A batch acts on each lease once, as the per-item statements it replaced did: dead letters
/// queue up after older ones in input order, a repeated lease counts where it first appears,
/// and renewals (which leave a lease held) answer for every listing.
#[tokio::test]
async fn batches_act_per_item_in_input_order() {
    let (_dir, q) = a_queue().await;
    let all = ["a", "b", "c", "d", "e", "f"].map(|t| an_entry(t, Priority::Standard));
    q.enqueue(&all).await.unwrap();
    let l: Vec<LeaseId> = q
        .claim(&cpu(), 6, LEASE, at(0))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease_id)
        .collect();
    q.dead_letter(&[(l[5].clone(), "first".into())], at(1))
        .await
        .unwrap();
    let stranger = LeaseId::parse("lease-unknown").unwrap();
    let renewed = q
        .renew(&[l[0].clone(), stranger.clone(), l[0].clone()], at(20_000))
        .await
        .unwrap();
    assert_eq!(renewed, [l[0].clone(), l[0].clone()]);
    q.dead_letter(
        &[
            (l[3].clone(), "d".into()),
            (stranger.clone(), "nobody".into()),
            (l[1].clone(), "b".into()),
            (l[3].clone(), "d again".into()),
        ],
        at(2),
    )
    .await
    .unwrap();
    let dead = q.list_dead(10).await.unwrap();
    let got: Vec<_> = dead
        .iter()
        .map(|d| (d.entry.task_id.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(got, [("f", "first"), ("d", "d"), ("b", "b")]);

    q.nack(&[(l[2].clone(), at(5_000)), (l[2].clone(), at(9_000))])
        .await
        .unwrap();
    let again = q.claim(&cpu(), 5, LEASE, at(5_000)).await.unwrap();
    assert_eq!(names(&again), ["c"]);

    let refs = [
        all[1].task_ref(),
        all[1].task_ref(),
        all[4].task_ref(),
        all[5].task_ref(),
    ];
    let revived = q.requeue_dead(&refs, at(6_000)).await.unwrap();
    assert_eq!(revived, [all[1].task_ref(), all[5].task_ref()]);
    q.ack(&[l[0].clone(), l[4].clone(), stranger])
        .await
        .unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        QueueDepth {
            standard: 2,
            leased: 1,
            dead: 1,
            ..Default::default()
        }
    );
}

/// Lease ids of one claim share a fresh prefix and differ per entry; every one is a valid id.
#[tokio::test]
async fn claimed_lease_ids_are_unique_across_claims() {
    let (_dir, q) = a_queue().await;
    let all: Vec<_> = (0..10)
        .map(|i| an_entry(&format!("t{i}"), Priority::Standard))
        .collect();
    q.enqueue(&all).await.unwrap();
    let mut ids = BTreeSet::new();
    for _ in 0..2 {
        let leases = q.claim(&cpu(), 10, LEASE, at(0)).await.unwrap();
        let held: Vec<_> = leases.iter().map(|l| l.lease_id.clone()).collect();
        q.nack(&held.iter().map(|l| (l.clone(), at(0))).collect::<Vec<_>>())
            .await
            .unwrap();
        for l in held {
            assert!(LeaseId::parse(l.as_str()).is_ok(), "{l}");
            assert!(ids.insert(l));
        }
    }
    assert_eq!(ids.len(), 20);
}

/// Leases that ran out together are dead-lettered in deadline order, after older dead letters.
#[tokio::test]
async fn expire_buries_in_deadline_order() {
    let (_dir, q) = a_queue().await;
    let once = |t: &str| QueueEntry {
        max_attempts: 1,
        ..an_entry(t, Priority::Standard)
    };
    q.enqueue(&[once("old")]).await.unwrap();
    let old = q.claim(&cpu(), 1, LEASE, at(0)).await.unwrap();
    q.dead_letter(&[(old[0].lease_id.clone(), "x".into())], at(0))
        .await
        .unwrap();
    q.enqueue(&[
        once("late"),
        once("early"),
        an_entry("again", Priority::Standard),
    ])
    .await
    .unwrap();
    q.claim(&cpu(), 1, Duration::from_secs(20), at(0))
        .await
        .unwrap();
    q.claim(&cpu(), 2, LEASE, at(0)).await.unwrap();
    let expired = q.expire(at(30_000)).await.unwrap();
    let got: Vec<_> = expired
        .iter()
        .map(|e| format!("{} {:?}", e.lease.entry.task_id, e.outcome))
        .collect();
    assert_eq!(
        got,
        ["early DeadLettered", "again Requeued", "late DeadLettered"]
    );
    let dead: Vec<_> = q.list_dead(10).await.unwrap();
    let dead: Vec<_> = dead.iter().map(|d| d.entry.task_id.as_str()).collect();
    assert_eq!(dead, ["old", "early", "late"]);
}

/// The queue's statements are prepared once: none uses a bound parameter's value in its plan
/// (a bare `LIMIT ?` did, and every claim was parsed and planned again).
#[tokio::test]
async fn statements_are_not_prepared_again() {
    let (_dir, q) = a_queue().await;
    // Rows to walk, so that the statements run their plans.
    q.enqueue(&[gpu_entry("a")]).await.unwrap();
    for sql in [
        claim::CLAIM,
        claim::ANY_CLAIMABLE,
        enqueue::UPSERT_ENTRY,
        LIST_DEAD,
        EXPIRED,
        ACK,
        NACK,
    ] {
        assert_eq!(
            crate::store::sqlite::reprepares(&q.db, sql).await,
            0,
            "{sql}"
        );
    }
    // The check itself finds a statement that is prepared again.
    let bare = "SELECT seq FROM queue_entries LIMIT ?1";
    assert!(crate::store::sqlite::reprepares(&q.db, bare).await > 0);
}
