-- Statements on a lease find its row by the `seq` the lease id ends with (a rowid seek) and
-- then match the whole id, so the unique index of lease ids is no longer read. It cost two
-- writes per task (an insert at the claim, a delete at the ack). Lease ids stay unique
-- without it: each claim's ids share a fresh time-ordered prefix and end with distinct seqs.
DROP INDEX IF EXISTS queue_lease;
