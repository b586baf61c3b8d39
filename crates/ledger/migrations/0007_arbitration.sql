-- Arbitration of new work on a busy partition. A run deferred behind an active one is not
-- compiled until that run has finished (plain TEXT, not a foreign key: pruning the finished
-- run must not be blocked by a run still queued behind it). `arbitrated` records that the
-- run's arbitration was decided (parallel or abort), so a compile retried later does not ask
-- again; a deferred run is arbitrated afresh when it is claimed again.
ALTER TABLE runs ADD COLUMN deferred_behind TEXT;
ALTER TABLE runs ADD COLUMN arbitrated INTEGER NOT NULL DEFAULT 0 CHECK (arbitrated IN (0, 1));
CREATE INDEX runs_by_partition_status ON runs(partition_key, status);
