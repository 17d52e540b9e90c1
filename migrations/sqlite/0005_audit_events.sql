-- The tamper-evident audit log: an append-only SHA-256 chain. `id` is assigned by the append
-- (one past the head, in the same write transaction that reads the head), so ids have no gaps
-- and the chain cannot fork. `details` holds canonical JSON (keys sorted).
CREATE TABLE audit_events (
    id            INTEGER PRIMARY KEY,
    action        TEXT    NOT NULL,
    actor         TEXT    NOT NULL,
    tenant        TEXT,
    remote_addr   TEXT,
    resource      TEXT    NOT NULL,
    payload_hash  TEXT,
    requested     INTEGER,
    result        TEXT    NOT NULL,
    details       TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    prev_hash     TEXT    NOT NULL,
    event_hash    TEXT    NOT NULL
);
-- One index per list filter, each ending in `id` so a filtered page is an index walk.
CREATE INDEX audit_by_created ON audit_events (created_at_ms, id);
CREATE INDEX audit_by_action  ON audit_events (action, id);
CREATE INDEX audit_by_actor   ON audit_events (actor, id);
CREATE INDEX audit_by_tenant  ON audit_events (tenant, id);
