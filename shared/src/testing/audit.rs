//! The audit-log contract every [`AuditLog`] backend passes: appends and their chain, listing
//! with every filter and paging, verification, tampering found, and concurrent appends (also
//! through two handles on one database, as two processes would) leaving one unbroken chain.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;

use crate::clock::from_millis;
use crate::domain::{GENESIS_HASH, NewAuditEvent, TenantId, Timestamp};
use crate::store::{AuditFilter, AuditLog};

/// 2026-01-01T00:00:00Z plus `ms`.
pub fn at(ms: i64) -> Timestamp {
    from_millis(1_767_225_600_000 + ms)
}

/// An event by `actor` for `tenant` with `result`, at `at(ms)`.
pub fn an_audit_event(
    action: &str,
    actor: &str,
    tenant: &str,
    result: &str,
    ms: i64,
) -> NewAuditEvent {
    NewAuditEvent {
        action: action.into(),
        actor: actor.into(),
        tenant: Some(TenantId::parse(tenant).expect("tenant")),
        remote_addr: Some("10.0.0.7".into()),
        resource: "/v1/admin/queue/deadletter/requeue".into(),
        payload_hash: Some("ab".repeat(32)),
        requested: Some(3),
        result: result.into(),
        details: json!({"reason": "because", "count": 2, "nested": {"z": 1, "a": [1.5, null]}}),
        created_at: at(ms),
    }
}

fn all() -> AuditFilter {
    AuditFilter {
        limit: 100,
        ..AuditFilter::default()
    }
}

/// Appends chain from the genesis hash, stored events read back as appended, and listing is
/// newest first with every filter and paging.
pub async fn append_list_filter_and_page(log: &dyn AuditLog) {
    assert!(log.list(&all()).await.unwrap().is_empty());
    let first = log
        .append(an_audit_event(
            "deadletter_requeue",
            "fp-a",
            "acme",
            "ok",
            0,
        ))
        .await
        .unwrap();
    assert_eq!((first.id, first.prev_hash.as_str()), (1, GENESIS_HASH));
    assert_eq!(first.event_hash, first.expected_hash());
    let mut tenantless = an_audit_event("policy_check_submit", "fp-b", "acme", "denied", 10);
    tenantless.tenant = None;
    tenantless.remote_addr = None;
    tenantless.payload_hash = None;
    tenantless.requested = None;
    let second = log.append(tenantless).await.unwrap();
    assert_eq!((second.id, &second.prev_hash), (2, &first.event_hash));
    log.append(an_audit_event(
        "policy_check_submit",
        "fp-a",
        "globex",
        "allowed",
        20,
    ))
    .await
    .unwrap();
    log.append(an_audit_event(
        "deadletter_requeue",
        "fp-b",
        "globex",
        "ok",
        30,
    ))
    .await
    .unwrap();

    let listed = log.list(&all()).await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id).collect::<Vec<_>>(),
        [4, 3, 2, 1]
    );
    assert_eq!(listed[3], first, "read back exactly as appended");
    assert_eq!(listed[2], second);

    let ids = |f: AuditFilter| async move {
        log.list(&f)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let f = |g: fn(&mut AuditFilter)| {
        let mut f = all();
        g(&mut f);
        f
    };
    assert_eq!(
        ids(f(|f| f.action = Some("deadletter_requeue".into()))).await,
        [4, 1]
    );
    assert_eq!(ids(f(|f| f.actor = Some("fp-b".into()))).await, [4, 2]);
    assert_eq!(
        ids(f(|f| f.tenant = Some(TenantId::parse("globex").unwrap()))).await,
        [4, 3]
    );
    assert_eq!(ids(f(|f| f.result = Some("denied".into()))).await, [2]);
    assert_eq!(ids(f(|f| f.from = Some(at(10)))).await, [4, 3, 2]);
    assert_eq!(ids(f(|f| f.to = Some(at(20)))).await, [2, 1]);
    assert_eq!(
        ids(f(|f| {
            f.from = Some(at(10));
            f.to = Some(at(30));
            f.actor = Some("fp-a".into());
        }))
        .await,
        [3]
    );
    assert_eq!(ids(f(|f| f.limit = 2)).await, [4, 3]);
    assert_eq!(
        ids(f(|f| {
            f.limit = 2;
            f.offset = 2;
        }))
        .await,
        [2, 1]
    );
    assert!(ids(f(|f| f.offset = 4)).await.is_empty());
}

/// An untouched chain verifies, with its length and head; an empty one too.
pub async fn verify_accepts_an_intact_chain(log: &dyn AuditLog) {
    let empty = log.verify().await.unwrap();
    assert!(
        empty.ok && empty.events == 0 && empty.head_hash.is_none(),
        "{empty:?}"
    );
    let mut last = None;
    for i in 0..7 {
        last = Some(
            log.append(an_audit_event("a", "fp", "acme", "ok", i))
                .await
                .unwrap(),
        );
    }
    let r = log.verify().await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.events, r.head_hash), (7, last.map(|e| e.event_hash)));
}

/// `tamper(id)` changes a stored field of event `id` behind the log's back; verify then names
/// that event.
pub async fn verify_finds_a_tampered_event<F, Fut>(log: &dyn AuditLog, tamper: F)
where
    F: FnOnce(i64) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..5 {
        log.append(an_audit_event("a", "fp", "acme", "ok", i))
            .await
            .unwrap();
    }
    tamper(3).await;
    let r = log.verify().await.unwrap();
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.broken_at, Some(3), "{r:?}");
    assert_eq!(r.events, 3);
    assert!(
        r.reason
            .as_deref()
            .unwrap_or_default()
            .contains("event_hash"),
        "{r:?}"
    );
}

/// Many tasks appending at once through `a` and `b` (two handles on one log, as two processes
/// would hold) leave one chain: ids 1..=n without gaps and every link intact.
pub async fn concurrent_appends_keep_one_chain(a: Arc<dyn AuditLog>, b: Arc<dyn AuditLog>) {
    const TASKS: i64 = 16;
    const EACH: i64 = 5;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = if t % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            for i in 0..EACH {
                log.append(an_audit_event("race", &format!("fp-{t}"), "acme", "ok", i))
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let r = a.verify().await.unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.events, (TASKS * EACH) as u64);
    let listed = b
        .list(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = listed.iter().rev().map(|e| e.id).collect();
    assert_eq!(ids, (1..=TASKS * EACH).collect::<Vec<_>>());
}
