-- Tasks become an ordinary rowid table. As a WITHOUT ROWID table, a task row lived in an
-- index b-tree, whose rows keep at most ~1 KB on a 4 KiB page; a task body is 0.7-1.5 KB,
-- so nearly every row spilled into an overflow page of its own (5 KB a task on disk), and
-- every task write dirtied two pages. A rowid table keeps rows up to ~4 KB in place, several
-- to a page. The (job_id, task_id) key becomes a unique index.

CREATE TABLE tasks_rebuilt (
    job_id           TEXT    NOT NULL REFERENCES jobs (job_id),
    task_id          TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    worker_id        TEXT,
    lease_id         TEXT,
    lease_expires_ms INTEGER,
    body             TEXT    NOT NULL,
    UNIQUE (job_id, task_id)
);
INSERT INTO tasks_rebuilt
    SELECT job_id, task_id, position, status, worker_id, lease_id, lease_expires_ms, body
    FROM tasks ORDER BY job_id, position;
DROP TABLE tasks;
ALTER TABLE tasks_rebuilt RENAME TO tasks;
CREATE INDEX tasks_by_position ON tasks (job_id, position);
