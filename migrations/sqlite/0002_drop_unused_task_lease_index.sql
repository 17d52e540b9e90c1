-- No query reads tasks by (status, lease_expires_ms): lease expiry is driven by the queue's
-- own index. Every task write maintained it anyway (about 20% of the cost of a task write).
-- A store-side reconciliation sweep that needs it can bring it back in a later migration.
DROP INDEX IF EXISTS tasks_by_lease;
