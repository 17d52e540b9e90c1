-- The tamper-evident audit log: an append-only SHA-256 chain. `id` is assigned by the append
-- (one past the head, read under a transaction-scoped advisory lock in the same transaction),
-- so ids have no gaps and concurrent gateways cannot fork the chain. `details` holds canonical
-- JSON as text (keys sorted), exactly what was hashed.
CREATE TABLE audit_events (
    id            BIGINT  PRIMARY KEY,
    action        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    tenant        TEXT,
    remote_addr   TEXT,
    resource      TEXT    NOT NULL,
    payload_hash  TEXT,
    requested     BIGINT,
    result        TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    prev_hash     TEXT    NOT NULL,
    event_hash    TEXT    NOT NULL
);
CREATE INDEX audit_by_created ON audit_events (created_at_ms, id);
CREATE INDEX audit_by_action  ON audit_events (action, id);
CREATE INDEX audit_by_actor   ON audit_events (actor, id);
CREATE INDEX audit_by_tenant  ON audit_events (tenant, id);
