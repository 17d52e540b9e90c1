-- SPLAI SQLite schema, version 1.
--
-- Conventions: timestamps are INTEGER unix milliseconds (`*_ms`); identifiers are TEXT.
-- Records whose fields are never filtered are kept whole in a `body` JSON column; every field
-- that is filtered, joined or sorted on is also a real column, written together with the body.

-- Jobs. `seq` is the creation order that `list_jobs` pages over (newest first).
CREATE TABLE jobs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT    NOT NULL UNIQUE,
    tenant        TEXT    NOT NULL,
    job_type      TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    body          TEXT    NOT NULL
);
-- One index per `list_jobs` filter, each ending in `seq` so a filtered page is an index walk.
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_type   ON jobs (job_type, seq);

-- Tasks, one row each. `position` is the planning order.
CREATE TABLE tasks (
    job_id           TEXT    NOT NULL REFERENCES jobs (job_id),
    task_id          TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    worker_id        TEXT,
    lease_id         TEXT,
    lease_expires_ms INTEGER,
    body             TEXT    NOT NULL,
    PRIMARY KEY (job_id, task_id)
) WITHOUT ROWID;
CREATE INDEX tasks_by_position ON tasks (job_id, position);
CREATE INDEX tasks_by_lease    ON tasks (status, lease_expires_ms);

-- Used idempotency keys. No foreign key to `jobs`: the key row is written first, so that a
-- repeat is detected before anything else is written.
CREATE TABLE idempotency_keys (
    tenant        TEXT    NOT NULL,
    idem_key      TEXT    NOT NULL,
    job_id        TEXT    NOT NULL,
    request_hash  TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, idem_key)
) WITHOUT ROWID;

-- Registered workers. Registration and load are separate JSON columns so that a heartbeat is
-- a single blind UPDATE; health is derived on read.
CREATE TABLE workers (
    worker_id         TEXT    PRIMARY KEY,
    registration      TEXT    NOT NULL,
    load_figures      TEXT    NOT NULL,
    registered_at_ms  INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL
);
CREATE INDEX workers_by_heartbeat ON workers (last_heartbeat_ms);

-- Queue entries waiting for a relay (`Dispatch::Outbox`). AUTOINCREMENT so an id handed to a
-- relay is never reused by a later entry, even after the newest entry was deleted.
CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id        TEXT    NOT NULL,
    task_id       TEXT    NOT NULL,
    tenant        TEXT    NOT NULL,
    priority_rank INTEGER NOT NULL,
    requires_gpu  INTEGER NOT NULL,
    backend       TEXT,
    model         TEXT,
    target_worker TEXT,
    attempt       INTEGER NOT NULL,
    max_attempts  INTEGER NOT NULL,
    not_before_ms INTEGER NOT NULL
);

-- The lease queue. One row per task; `seq` is its FIFO position and survives re-enqueue.
-- Lease columns are set only while `state = 'leased'`, dead columns only while 'dead'.
CREATE TABLE queue_entries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT    NOT NULL,
    task_id          TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    priority_rank    INTEGER NOT NULL,
    requires_gpu     INTEGER NOT NULL,
    backend          TEXT,
    model            TEXT,
    target_worker    TEXT,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    not_before_ms    INTEGER NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'leased', 'dead')),
    lease_id         TEXT    UNIQUE,
    leased_by        TEXT,
    lease_expires_ms INTEGER,
    dead_reason      TEXT,
    dead_at_ms       INTEGER,
    dead_seq         INTEGER,
    UNIQUE (job_id, task_id)
);
-- claim walks this in claim order; depth counts over it without touching the table.
CREATE INDEX queue_claim  ON queue_entries (state, priority_rank, seq);
-- expire walks leases by deadline.
CREATE INDEX queue_expiry ON queue_entries (state, lease_expires_ms, lease_id);
-- list_dead walks dead letters oldest first; also serves MAX(dead_seq).
CREATE INDEX queue_dead   ON queue_entries (state, dead_seq);
