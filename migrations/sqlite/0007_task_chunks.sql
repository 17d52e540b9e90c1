-- Streamed output of running tasks (model tokens), appended by workers while a task runs and
-- read by gateways relaying it to waiting clients (any instance: the table is the meeting
-- point). The store assigns `id`, the read order; `(job_id, task_id, lease_id, seq)` makes a
-- repeated append harmless.
CREATE TABLE task_chunks (
    id       INTEGER PRIMARY KEY,
    job_id   TEXT    NOT NULL,
    task_id  TEXT    NOT NULL,
    lease_id TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    text     TEXT    NOT NULL,
    UNIQUE (job_id, task_id, lease_id, seq)
);
CREATE INDEX task_chunks_by_task ON task_chunks (job_id, task_id, id);
