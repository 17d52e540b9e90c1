-- The webhook outbox: one row per job event owed to a job's `webhook_url`, inserted in the
-- write transaction that makes the job terminal, so a crash cannot lose it. `body` is the
-- exact JSON sent (and signed) on every attempt. While `state` is 'pending', `next_attempt_ms`
-- is when it is due; a deliverer leases due rows (`lease_token`, `lease_until_ms`) so that two
-- gateways do not send one at once. `attempt_log` is a JSON array of attempts.
CREATE TABLE webhook_deliveries (
    delivery_id     TEXT    PRIMARY KEY,
    job_id          TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    lease_token     TEXT,
    lease_until_ms  INTEGER,
    created_at_ms   INTEGER NOT NULL,
    attempt_log     TEXT    NOT NULL DEFAULT '[]'
);
-- Due deliveries, oldest first; finished rows stay out of the index.
CREATE INDEX webhook_due ON webhook_deliveries (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX webhook_by_job ON webhook_deliveries (job_id, created_at_ms);
