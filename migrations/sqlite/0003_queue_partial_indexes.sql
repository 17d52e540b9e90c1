-- Partial indexes on the lease queue: every state's rows are indexed only where that state is
-- looked up. Before, the claim, expiry and dead-letter indexes all led with `state` and held
-- every row, so each transition rewrote an entry in all three, plus the lease id's (NULL)
-- entry; now a transition moves a row between two small indexes.
--
-- The lease id's uniqueness moves from a column constraint (which indexes NULLs too) to a
-- partial unique index, which needs the table rebuilt: SQLite cannot drop a column constraint.

CREATE TABLE queue_entries_rebuilt (
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
    lease_id         TEXT,
    leased_by        TEXT,
    lease_expires_ms INTEGER,
    dead_reason      TEXT,
    dead_at_ms       INTEGER,
    dead_seq         INTEGER,
    UNIQUE (job_id, task_id)
);
INSERT INTO queue_entries_rebuilt SELECT * FROM queue_entries;
-- Keep AUTOINCREMENT's promise across the rebuild: no `seq` is ever handed out twice.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'queue_entries_rebuilt', seq FROM sqlite_sequence WHERE name = 'queue_entries';
DELETE FROM sqlite_sequence WHERE name = 'queue_entries_rebuilt' AND rowid NOT IN (
    SELECT MAX(rowid) FROM sqlite_sequence WHERE name = 'queue_entries_rebuilt');
DROP TABLE queue_entries;
ALTER TABLE queue_entries_rebuilt RENAME TO queue_entries;

-- claim walks pending entries in claim order; depth counts them per class.
CREATE INDEX queue_pending ON queue_entries (priority_rank, seq) WHERE state = 'pending';
-- expire walks leases by deadline; depth counts them.
CREATE INDEX queue_leased  ON queue_entries (lease_expires_ms, lease_id) WHERE state = 'leased';
-- list_dead walks dead letters oldest first; also serves MAX(dead_seq).
CREATE INDEX queue_dead    ON queue_entries (dead_seq) WHERE state = 'dead';
-- renew, ack, nack, release and bury find a lease by its id.
CREATE UNIQUE INDEX queue_lease ON queue_entries (lease_id) WHERE lease_id IS NOT NULL;
