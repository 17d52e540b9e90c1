-- Named locks with a deadline (RunLocks): the scheduled sweeper runs in one copy at a time.
CREATE TABLE run_locks (
    name     TEXT    PRIMARY KEY,
    holder   TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
);
