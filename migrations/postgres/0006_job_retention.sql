-- Retention (SPLAI_JOB_TTL): the sweep prunes terminal jobs by the time they finished.
-- `finished_at_ms` mirrors the body's `finished_at` (NULL while the job is open), so the
-- partial index holds only finished jobs and the prune walks the oldest first.
ALTER TABLE jobs ADD COLUMN finished_at_ms BIGINT;
-- Jobs finished before this migration: their last change is an upper bound on when they
-- finished, so the backfill can only keep a job longer, never prune it early.
UPDATE jobs SET finished_at_ms = updated_at_ms
    WHERE status IN ('Completed', 'Failed', 'Canceled');
CREATE INDEX jobs_by_finished ON jobs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
-- A pruned job's idempotency keys are found by job.
CREATE INDEX idempotency_by_job ON idempotency_keys (job_id);
