//! Audit events and their SHA-256 hash chain: each event hashes its own fields together with
//! the previous event's hash, so changing, removing or reordering a stored event breaks every
//! link after it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{TenantId, Timestamp};
use crate::clock::to_millis;

/// The `prev_hash` of the first event of a chain: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event to append: what happened, who did it, and to what. The log assigns the id and the
/// chain fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewAuditEvent {
    /// What was done, e.g. `deadletter_requeue`, `policy_check_submit`.
    pub action: String,
    /// Who did it: a token fingerprint, never the token.
    pub actor: String,
    /// The tenant acted for, when there is one.
    pub tenant: Option<TenantId>,
    /// The caller's address, when known.
    pub remote_addr: Option<String>,
    /// What was acted on, e.g. a route or a job id.
    pub resource: String,
    /// SHA-256 (hex) of the request payload, when there was one.
    pub payload_hash: Option<String>,
    /// How many items the request asked for (a requeue batch, say).
    pub requested: Option<u32>,
    /// The outcome, e.g. `ok`, `allowed`, `denied`, `error`.
    pub result: String,
    /// Anything else worth keeping (rule name, reason, counts), as JSON.
    pub details: Value,
    /// When it happened (whole milliseconds; the backends keep no more).
    #[serde(with = "super::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// A stored audit event: the new event with its id and its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub id: i64,
    /// The event's fields.
    #[serde(flatten)]
    pub event: NewAuditEvent,
    /// The previous event's `event_hash`, or [`GENESIS_HASH`] for the first.
    pub prev_hash: String,
    /// [`event_hash`] of this event.
    pub event_hash: String,
}

impl AuditEvent {
    /// Places `event` after the event whose hash is `prev_hash`, as event `id`. The event is
    /// first brought to the form every backend stores exactly (`details` with sorted keys,
    /// `created_at` in whole milliseconds), so a round trip cannot change its hash.
    pub fn chain(id: i64, mut event: NewAuditEvent, prev_hash: String) -> AuditEvent {
        event.details = canonical(&event.details);
        event.created_at = crate::clock::truncate_millis(event.created_at);
        let event_hash = event_hash(id, &event, &prev_hash);
        AuditEvent {
            id,
            event,
            prev_hash,
            event_hash,
        }
    }

    /// The hash the event's stored fields call for (equal to `event_hash` unless tampered).
    pub fn expected_hash(&self) -> String {
        event_hash(self.id, &self.event, &self.prev_hash)
    }
}

/// `hex(SHA-256(prev_hash ‖ canonical))`, where `canonical` is the compact JSON array
/// `[id, created_at_ms, action, actor, tenant, remote_addr, resource, payload_hash, requested,
/// result, details]` (absent values as `null`, object keys of `details` sorted at every level).
/// `prev_hash` is always 64 hex characters, so the concatenation is unambiguous.
pub fn event_hash(id: i64, e: &NewAuditEvent, prev_hash: &str) -> String {
    let body = canonical_fields(id, e);
    hex::encode(
        Sha256::new()
            .chain_update(prev_hash.as_bytes())
            .chain_update(body.as_bytes())
            .finalize(),
    )
}

fn canonical_fields(id: i64, e: &NewAuditEvent) -> String {
    let fields = Value::Array(vec![
        id.into(),
        to_millis(e.created_at).into(),
        e.action.as_str().into(),
        e.actor.as_str().into(),
        e.tenant.as_ref().map(|t| t.as_str()).into(),
        e.remote_addr.as_deref().into(),
        e.resource.as_str().into(),
        e.payload_hash.as_deref().into(),
        e.requested.into(),
        e.result.as_str().into(),
        canonical(&e.details),
    ]);
    fields.to_string()
}

/// The value with every object's keys in sorted order, whatever map type serde_json uses.
pub fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&map[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// What walking the chain found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events checked (all of them when `ok`; up to and including the broken one otherwise).
    pub events: u64,
    /// The last event's hash when `ok` (none for an empty log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// The id of the first event whose link is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
    /// Why that link is broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Walks a chain in id order, one page at a time; feed it every event, then call
/// [`ChainWalk::finish`]. Stops at the first broken link.
#[derive(Debug, Clone)]
pub struct ChainWalk {
    prev_id: i64,
    prev_hash: String,
    events: u64,
    broken: Option<(i64, String)>,
}

impl Default for ChainWalk {
    fn default() -> Self {
        Self {
            prev_id: 0,
            prev_hash: GENESIS_HASH.to_owned(),
            events: 0,
            broken: None,
        }
    }
}

impl ChainWalk {
    /// Checks the next event; `false` once a link is broken (there is no point going on).
    pub fn check(&mut self, e: &AuditEvent) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.events += 1;
        let reason = if e.id != self.prev_id + 1 {
            Some(format!(
                "id {} follows id {}: events are missing",
                e.id, self.prev_id
            ))
        } else if e.prev_hash != self.prev_hash {
            Some("prev_hash does not match the previous event's event_hash".to_owned())
        } else if e.expected_hash() != e.event_hash {
            Some("event_hash does not match the event's fields".to_owned())
        } else {
            None
        };
        self.prev_id = e.id;
        self.prev_hash.clone_from(&e.event_hash);
        match reason {
            Some(r) => {
                self.broken = Some((e.id, r));
                false
            }
            None => true,
        }
    }

    /// The last id seen, where the next page starts after.
    pub fn last_id(&self) -> i64 {
        self.prev_id
    }

    /// The verdict.
    pub fn finish(self) -> ChainReport {
        match self.broken {
            Some((id, reason)) => ChainReport {
                ok: false,
                events: self.events,
                head_hash: None,
                broken_at: Some(id),
                reason: Some(reason),
            },
            None => ChainReport {
                ok: true,
                events: self.events,
                head_hash: (self.events > 0).then_some(self.prev_hash),
                broken_at: None,
                reason: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_millis;

    fn an_event(action: &str) -> NewAuditEvent {
        NewAuditEvent {
            action: action.into(),
            actor: "abc123".into(),
            tenant: Some(TenantId::parse("acme").unwrap()),
            remote_addr: None,
            resource: "/v1/admin/queue/deadletter".into(),
            payload_hash: None,
            requested: Some(3),
            result: "ok".into(),
            details: serde_json::json!({"b": 1, "a": {"d": 2, "c": 3}}),
            created_at: from_millis(1_767_225_600_000),
        }
    }

    /// The hash covers every field and the previous hash, and not the map's key order.
    #[test]
    fn hash_covers_fields_and_previous_hash() {
        let e = an_event("x");
        let h = event_hash(1, &e, GENESIS_HASH);
        assert_eq!(h.len(), 64);
        assert_ne!(h, event_hash(2, &e, GENESIS_HASH));
        assert_ne!(h, event_hash(1, &e, &"1".repeat(64)));
        let mut other = e.clone();
        other.result = "denied".into();
        assert_ne!(h, event_hash(1, &other, GENESIS_HASH));
        let mut reordered = e.clone();
        reordered.details = serde_json::json!({"a": {"c": 3, "d": 2}, "b": 1});
        assert_eq!(h, event_hash(1, &reordered, GENESIS_HASH));
    }

    /// A walk accepts a proper chain and names the first event whose link is broken.
    #[test]
    fn walk_names_the_first_broken_link() {
        let a = AuditEvent::chain(1, an_event("a"), GENESIS_HASH.into());
        let b = AuditEvent::chain(2, an_event("b"), a.event_hash.clone());
        let mut c = AuditEvent::chain(3, an_event("c"), b.event_hash.clone());
        let mut w = ChainWalk::default();
        assert!(w.check(&a) && w.check(&b) && w.check(&c));
        let r = w.finish();
        assert!(r.ok && r.events == 3 && r.head_hash == Some(c.event_hash.clone()));
        c.event.actor = "mallory".into();
        let mut w = ChainWalk::default();
        assert!(w.check(&a) && w.check(&b) && !w.check(&c));
        let r = w.finish();
        assert_eq!((r.ok, r.broken_at), (false, Some(3)));
        let mut w = ChainWalk::default();
        assert!(w.check(&a) && !w.check(&c));
        assert!(w.finish().reason.unwrap().contains("missing"));
    }
}
