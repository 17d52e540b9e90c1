//! The admin router's audit endpoints against the real server: filters and paging, CSV
//! export, and a row tampered in the database found by verify (scopes: `scope_matrix.rs`).

use reqwest::StatusCode;
use serde_json::{Value, json};
use splai_shared::testing::audit::an_audit_event;

use crate::helpers::*;

/// Appends the four events of the filter tests: ids 1..=4, 10 ms apart from 2026-01-01.
async fn seed(app: &TestApp) {
    let log = &app.engine.backends().audit;
    for (i, (action, actor, tenant, result)) in [
        ("deadletter_requeue", "fp-a", "acme", "ok"),
        ("policy_check_submit", "fp-b", "acme", "denied"),
        ("policy_check_submit", "fp-a", "globex", "allowed"),
        ("deadletter_requeue", "fp-b", "globex", "ok"),
    ]
    .into_iter()
    .enumerate()
    {
        let ms = 10 * i as i64;
        log.append(an_audit_event(action, actor, tenant, result, ms))
            .await
            .unwrap();
    }
}

fn ids(body: &Value) -> Vec<i64> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

/// Every filter narrows the newest-first list, paging walks it, and bad values are a 400
/// naming the parameter.
#[tokio::test]
async fn audit_list_filters_and_pages() {
    let app = spawn_app().await;
    seed(&app).await;
    for (query, want) in [
        ("", vec![4, 3, 2, 1]),
        ("?action=deadletter_requeue", vec![4, 1]),
        ("?actor=fp-b", vec![4, 2]),
        ("?tenant=globex", vec![4, 3]),
        ("?result=denied", vec![2]),
        ("?from=2026-01-01T00:00:00.010Z", vec![4, 3, 2]),
        ("?to=2026-01-01T00:00:00.020Z", vec![2, 1]),
        (
            "?from=2026-01-01T00:00:00.010Z&to=2026-01-01T00:00:00.030Z&actor=fp-a",
            vec![3],
        ),
        ("?limit=2", vec![4, 3]),
        ("?limit=2&offset=2", vec![2, 1]),
        ("?offset=4", vec![]),
    ] {
        let (status, body) = app.get(&format!("/v1/admin/audit{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body), want, "{query}");
    }
    let (_, body) = app.get("/v1/admin/audit?limit=1").await;
    let e = &body["events"][0];
    assert_eq!(e["prev_hash"].as_str().unwrap().len(), 64);
    assert_eq!(e["event_hash"].as_str().unwrap().len(), 64);
    assert_eq!(e["actor"], "fp-b");
    for (query, names) in [
        ("?limit=0", "`limit`"),
        ("?from=yesterday", "`from`"),
        ("?to=2026-13-01T00:00:00Z", "`to`"),
        ("?format=xml", "`format`"),
    ] {
        let (status, body) = app.get(&format!("/v1/admin/audit{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.to_string().contains(names), "{query}: {body}");
    }
}

/// `format=csv` answers text/csv with a header row, one row per event (filters apply), and
/// fields holding commas or quotes quoted with the quotes doubled.
#[tokio::test]
async fn audit_exports_csv() {
    let app = spawn_app().await;
    seed(&app).await;
    let mut tricky = an_audit_event("note", "fp-c", "acme", "ok, mostly", 50);
    tricky.details = json!({"reason": "said \"no\""});
    app.engine.backends().audit.append(tricky).await.unwrap();
    let resp = app
        .request(
            reqwest::Method::GET,
            "/v1/admin/audit?format=csv&actor=fp-c",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/csv"), "{ct}");
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "id,created_at,action,actor,tenant,remote_addr,resource,payload_hash,requested,result,details,prev_hash,event_hash"
    );
    assert_eq!(lines.len(), 3, "header, one row, trailing empty: {text}");
    assert!(
        lines[1].starts_with("5,2026-01-01T00:00:00.05Z,note,fp-c,acme,10.0.0.7,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains(",\"ok, mostly\",\"{\"\"reason\"\":\"\"said \\\"\"no\\\"\"\"\"}\","),
        "{}",
        lines[1]
    );
    let all = app
        .request(reqwest::Method::GET, "/v1/admin/audit?format=csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all.split("\r\n").filter(|l| !l.is_empty()).count(), 6);
}

/// Verify says ok with the count and head; after a row is changed in the database file, it
/// names that row.
#[tokio::test]
async fn verify_finds_a_row_tampered_in_the_database() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/admin/audit/verify").await;
    assert_eq!(
        (status, &body["ok"], &body["events"]),
        (StatusCode::OK, &json!(true), &json!(0))
    );
    seed(&app).await;
    let (_, body) = app.get("/v1/admin/audit/verify").await;
    assert_eq!(
        (&body["ok"], &body["events"]),
        (&json!(true), &json!(4)),
        "{body}"
    );
    let newest = splai_shared::store::AuditFilter {
        limit: 1,
        ..Default::default()
    };
    let head = app.engine.backends().audit.list(&newest).await.unwrap();
    assert_eq!(body["head_hash"], json!(head[0].event_hash));

    let conn = rusqlite::Connection::open(app.dir.path().join("splai.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn.execute("UPDATE audit_events SET tenant = 'evil' WHERE id = 2", [])
        .unwrap();
    drop(conn);

    let (status, body) = app.get("/v1/admin/audit/verify").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["ok"], &body["broken_at"]),
        (&json!(false), &json!(2)),
        "{body}"
    );
    assert!(
        body["reason"].as_str().unwrap().contains("event_hash"),
        "{body}"
    );
}
