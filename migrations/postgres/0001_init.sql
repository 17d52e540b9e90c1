-- SPLAI Postgres schema, version 1.
--
-- The same tables as the SQLite schema (migrations/sqlite), in Postgres types. Timestamps are
-- BIGINT unix milliseconds (`*_ms`): the engine's clock decides every time (tests run it by
-- hand), never the database's `now()`. Records whose fields are never filtered are kept whole
-- in a `body` JSON column (`json`, not `jsonb`: it keeps the text exactly as written, costs no
-- conversion on either side, and accepts every string serde_json writes, `\u0000` included);
-- every field that is filtered, joined or sorted on is also a real column, written together
-- with the body.

-- Jobs. `seq` is the creation order that `list_jobs` pages over (newest first).
CREATE TABLE jobs (
    seq           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        TEXT   NOT NULL UNIQUE,
    tenant        TEXT   NOT NULL,
    job_type      TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    body          JSON   NOT NULL
);
-- One index per `list_jobs` filter, each ending in `seq`, so a filtered page is a backward
-- walk of one index (the original's tenant/status index, split so each filter has its own).
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE INDEX jobs_by_type   ON jobs (job_type, seq);

-- Tasks, one row each. `position` is the planning order.
--
-- The primary key (job_id, task_id) serves every task lookup: a job's tasks by `job_id =
-- ANY(..)` (loads, listings; a job has at most a few thousand tasks, so sorting them by
-- position costs less than keeping a second index on every task write) and single tasks by
-- key (updates, renewals). The original's `tasks(status, lease_expires_at)` is left out on
-- purpose: lease expiry is driven by the queue's own partial index, and no query reads tasks
-- by status across jobs (the SQLite schema dropped it in 0002 for the same reason).
CREATE TABLE tasks (
    job_id           TEXT    NOT NULL REFERENCES jobs (job_id),
    task_id          TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    worker_id        TEXT,
    lease_id         TEXT,
    lease_expires_ms BIGINT,
    body             JSON    NOT NULL,
    PRIMARY KEY (job_id, task_id)
);

-- Used idempotency keys. No foreign key to `jobs`: the key row is written first, so that a
-- repeat is detected before anything else is written.
CREATE TABLE idempotency_keys (
    tenant        TEXT   NOT NULL,
    idem_key      TEXT   NOT NULL,
    job_id        TEXT   NOT NULL,
    request_hash  TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, idem_key)
);

-- Registered workers. Registration and load are separate JSON columns so that a heartbeat is
-- a single blind UPDATE; health is derived on read. No index on `last_heartbeat_ms` (the
-- original had one): nothing queries by it, and without it a heartbeat changes no indexed
-- column, so Postgres can make it a HOT update that leaves no index entry behind.
CREATE TABLE workers (
    worker_id         TEXT   PRIMARY KEY,
    registration      JSON   NOT NULL,
    load_figures      JSON   NOT NULL,
    registered_at_ms  BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL
);
ALTER TABLE workers SET (fillfactor = 70);

-- Queue entries waiting for a relay (`Dispatch::Outbox`). An identity column never hands out
-- an id twice, so an id a relay holds can never name a later entry.
CREATE TABLE outbox (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        TEXT     NOT NULL,
    task_id       TEXT     NOT NULL,
    tenant        TEXT     NOT NULL,
    priority_rank SMALLINT NOT NULL,
    requires_gpu  BOOLEAN  NOT NULL,
    backend       TEXT,
    model         TEXT,
    target_worker TEXT,
    attempt       INTEGER  NOT NULL,
    max_attempts  INTEGER  NOT NULL,
    not_before_ms BIGINT   NOT NULL
);

-- The lease queue. One row per task; `seq` is its FIFO position and survives re-enqueue.
-- Lease columns are set only while `state = 'leased'`, dead columns only while 'dead'.
CREATE TABLE queue_entries (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id           TEXT     NOT NULL,
    task_id          TEXT     NOT NULL,
    tenant           TEXT     NOT NULL,
    priority_rank    SMALLINT NOT NULL,
    requires_gpu     BOOLEAN  NOT NULL,
    backend          TEXT,
    model            TEXT,
    target_worker    TEXT,
    attempt          INTEGER  NOT NULL,
    max_attempts     INTEGER  NOT NULL,
    not_before_ms    BIGINT   NOT NULL,
    state            TEXT     NOT NULL CHECK (state IN ('pending', 'leased', 'dead')),
    lease_id         TEXT,
    leased_by        TEXT,
    lease_expires_ms BIGINT,
    dead_reason      TEXT,
    dead_at_ms       BIGINT,
    dead_seq         BIGINT,
    UNIQUE (job_id, task_id)
);
-- Partial indexes: each state's rows are indexed only where that state is looked up, so a
-- transition moves a row between two small indexes.
-- claim walks pending entries in claim order (no sort, stops at its LIMIT); depth counts them.
CREATE INDEX queue_pending ON queue_entries (priority_rank, seq) WHERE state = 'pending';
-- expire walks leases by deadline; depth counts them.
CREATE INDEX queue_leased  ON queue_entries (lease_expires_ms, lease_id) WHERE state = 'leased';
-- list_dead walks dead letters oldest first.
CREATE INDEX queue_dead    ON queue_entries (dead_seq) WHERE state = 'dead';
-- renew, ack, nack, release and bury find a lease by its id.
CREATE UNIQUE INDEX queue_lease ON queue_entries (lease_id) WHERE lease_id IS NOT NULL;
-- Dead letters are numbered in the order they were buried.
CREATE SEQUENCE queue_dead_seq;

-- Dead tuples. Every queue transition (claim, ack, nack, expire) is an UPDATE or DELETE that
-- leaves a dead row version behind, and none can be HOT (each changes an indexed column or a
-- partial index predicate). What keeps the table and its indexes small:
--   * every queue transaction is one short statement or a few, so no long snapshot holds
--     vacuum back (claims commit before any work runs);
--   * acked entries are deleted, not kept with a `done` state, so the table holds only live
--     work plus dead letters;
--   * autovacuum runs on this table after 1% of it changed (plus 500 rows) instead of the
--     default 20%, without cost-based throttling, and re-analyses it often so the planner
--     keeps seeing a small table;
--   * fillfactor leaves room on each page for the new row version of an update.
-- The outbox is a queue too (insert, relay, delete) and gets the same settings.
ALTER TABLE queue_entries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 500,
    autovacuum_vacuum_cost_delay = 0
);
