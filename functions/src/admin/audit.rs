//! `GET /v1/admin/audit` (JSON or CSV), `GET /v1/admin/audit/verify`, and [`record`]: how
//! admin actions and policy decisions append to the audit log.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use splai_shared::domain::{AuditEvent, ChainReport, NewAuditEvent, TenantId, Timestamp};
use splai_shared::engine::{Engine, EngineError};
use splai_shared::store::AuditFilter;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::QueryParams;
use crate::openapi::ErrorBody;

/// Most events one page may hold.
const MAX_PAGE: u32 = 1000;

/// Query of `GET /v1/admin/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Events to skip.
    offset: Option<u32>,
    /// Only this action (`deadletter_requeue`, `policy_check_submit`, ...).
    action: Option<String>,
    /// Only this actor (a token fingerprint, or `anonymous`).
    actor: Option<String>,
    /// Only this tenant's events.
    tenant: Option<TenantId>,
    /// Only this result (`ok`, `rejected`, `allowed`, `denied`, ...).
    result: Option<String>,
    /// Only events at or after this RFC 3339 time.
    from: Option<String>,
    /// Only events before this RFC 3339 time.
    to: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
}

/// A page of audit events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    events: Vec<AuditEvent>,
}

/// Lists audit events, newest first, as JSON or (`format=csv`) CSV with a header row.
#[utoipa::path(
    get,
    path = "/v1/admin/audit",
    operation_id = "list_audit_events",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Events, newest first",
         content((AuditList = "application/json"), (String = "text/csv"))),
        (status = 400, description = "An invalid query", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<AdminState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "query `format` must be json or csv, not `{other}`"
            )));
        }
    };
    let filter = filter(q)?;
    let events = s
        .engine
        .backends()
        .audit
        .list(&filter)
        .await
        .map_err(|e| ApiError::from(EngineError::Store(e)))?;
    Ok(if csv {
        (
            [
                (CONTENT_TYPE, "text/csv; charset=utf-8"),
                (CONTENT_DISPOSITION, "attachment; filename=\"audit.csv\""),
            ],
            to_csv(&events),
        )
            .into_response()
    } else {
        Json(AuditList { events }).into_response()
    })
}

/// Walks the chain: `ok` with the event count and head hash, or the first broken link.
#[utoipa::path(
    get,
    path = "/v1/admin/audit/verify",
    operation_id = "verify_audit_chain",
    tag = "admin",
    responses((status = 200, description = "Whether the hash chain is intact", body = ChainReport))
)]
pub async fn verify(State(s): State<AdminState>) -> Result<Json<ChainReport>, ApiError> {
    let report = s
        .engine
        .backends()
        .audit
        .verify()
        .await
        .map_err(|e| ApiError::from(EngineError::Store(e)))?;
    Ok(Json(report))
}

/// The store filter a query asks for, with errors that name the parameter.
fn filter(q: AuditQuery) -> Result<AuditFilter, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "query `limit` must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(AuditFilter {
        limit,
        offset: q.offset.unwrap_or(0),
        action: q.action,
        actor: q.actor,
        tenant: q.tenant,
        result: q.result,
        from: instant("from", q.from)?,
        to: instant("to", q.to)?,
    })
}

fn instant(name: &str, raw: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    raw.map(|r| {
        Timestamp::parse(&r, &Rfc3339).map_err(|e| {
            ApiError::invalid(format!(
                "query `{name}` must be an RFC 3339 timestamp (e.g. 2026-01-01T00:00:00Z): {e}"
            ))
        })
    })
    .transpose()
}

/// The CSV columns, in order.
const CSV_HEADER: &str = "id,created_at,action,actor,tenant,remote_addr,resource,payload_hash,\
                          requested,result,details,prev_hash,event_hash";

/// Events as CSV (RFC 4180: CRLF line ends, fields quoted when they hold a comma, quote or
/// line break, quotes doubled).
fn to_csv(events: &[AuditEvent]) -> String {
    let mut out = String::with_capacity(256 * (events.len() + 1));
    out.push_str(CSV_HEADER);
    out.push_str("\r\n");
    for e in events {
        let ev = &e.event;
        let created = ev.created_at.format(&Rfc3339).unwrap_or_default();
        let fields: [&str; 13] = [
            &e.id.to_string(),
            &created,
            &ev.action,
            &ev.actor,
            ev.tenant.as_ref().map_or("", TenantId::as_str),
            ev.remote_addr.as_deref().unwrap_or(""),
            &ev.resource,
            ev.payload_hash.as_deref().unwrap_or(""),
            &ev.requested.map(|r| r.to_string()).unwrap_or_default(),
            &ev.result,
            &ev.details.to_string(),
            &e.prev_hash,
            &e.event_hash,
        ];
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_csv_field(&mut out, f);
        }
        out.push_str("\r\n");
    }
    out
}

fn push_csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Who made a request and from where: what every audit event records about it. The actor is
/// the caller's token fingerprint, never the token.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The caller's fingerprint (`anonymous` with auth off).
    pub actor: String,
    /// The first `X-Forwarded-For` address, else the peer address when the server records it.
    pub remote_addr: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let peer = || {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        };
        Ok(Origin {
            actor: caller.fingerprint().to_owned(),
            remote_addr: forwarded.or_else(peer),
        })
    }
}

/// What an admin action or policy decision appends: the rest comes from the [`Origin`].
#[derive(Debug, Clone, Default)]
pub struct Action<'a> {
    /// e.g. `deadletter_requeue`, `policy_check_submit`.
    pub action: &'a str,
    /// The tenant acted for, if any.
    pub tenant: Option<TenantId>,
    /// What was acted on (a route, a job id).
    pub resource: &'a str,
    /// The request body, hashed (SHA-256) into `payload_hash`; never stored itself.
    pub payload: Option<&'a [u8]>,
    /// How many items the request asked for.
    pub requested: Option<u32>,
    /// The outcome (`ok`, `allowed`, `denied`, `error`).
    pub result: &'a str,
    /// Rule name, reason, counts.
    pub details: serde_json::Value,
}

/// Appends `action` by `origin` to the audit log, stamped by the engine's clock.
///
/// # Errors
/// The log could not be written (the caller decides whether the action may stand without it).
pub async fn record(
    engine: &Engine,
    origin: &Origin,
    action: Action<'_>,
) -> Result<AuditEvent, ApiError> {
    let event = NewAuditEvent {
        action: action.action.to_owned(),
        actor: origin.actor.clone(),
        tenant: action.tenant,
        remote_addr: origin.remote_addr.clone(),
        resource: action.resource.to_owned(),
        payload_hash: action.payload.map(|p| hex::encode(Sha256::digest(p))),
        requested: action.requested,
        result: action.result.to_owned(),
        details: action.details,
        created_at: engine.now(),
    };
    engine
        .backends()
        .audit
        .append(event)
        .await
        .map_err(|e| EngineError::Store(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fields with commas, quotes and line breaks are quoted, quotes doubled; others bare.
    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        let mut out = String::new();
        for f in ["plain", "a,b", "say \"hi\"", "two\nlines", ""] {
            push_csv_field(&mut out, f);
            out.push('|');
        }
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"||");
    }

    /// `record` stores the fingerprint as actor and a hash of the payload, never the payload.
    #[tokio::test]
    async fn record_keeps_the_fingerprint_and_a_payload_hash() {
        let h = splai_shared::testing::Harness::new(splai_shared::backends::memory(), None);
        let engine = &h.engine;
        let origin = Origin {
            actor: "0123456789ab".into(),
            remote_addr: Some("10.1.2.3".into()),
        };
        let e = record(
            engine,
            &origin,
            Action {
                action: "deadletter_requeue",
                resource: "/v1/admin/queue/deadletter/requeue",
                payload: Some(b"{\"secret\":\"body\"}"),
                requested: Some(2),
                result: "ok",
                ..Action::default()
            },
        )
        .await
        .unwrap();
        assert_eq!((e.id, e.event.actor.as_str()), (1, "0123456789ab"));
        assert_eq!(
            e.event.payload_hash.as_deref(),
            Some(hex::encode(Sha256::digest(b"{\"secret\":\"body\"}")).as_str())
        );
        assert!(!serde_json::to_string(&e).unwrap().contains("secret"));
        assert!(engine.backends().audit.verify().await.unwrap().ok);
    }
}
