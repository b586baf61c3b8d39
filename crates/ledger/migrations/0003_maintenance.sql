-- Maintenance: the history of a FINISHED run may be pruned after its retention; a run that
-- is not finished, and its history, still cannot be deleted (the schema enforces it).
DROP TRIGGER run_steps_append_only_d;
CREATE TRIGGER run_steps_append_only_d BEFORE DELETE ON run_steps
    WHEN (SELECT status FROM runs WHERE id = OLD.run_id)
         NOT IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
    BEGIN SELECT RAISE(ABORT, 'run_steps is append-only while its run is not finished'); END;
DROP TRIGGER attempts_append_only_d;
CREATE TRIGGER attempts_append_only_d BEFORE DELETE ON attempts
    WHEN (SELECT r.status FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id = OLD.task_id)
         NOT IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
    BEGIN SELECT RAISE(ABORT, 'attempts is append-only while its run is not finished'); END;
CREATE TRIGGER runs_delete_only_finished BEFORE DELETE ON runs
    WHEN OLD.status NOT IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
    BEGIN SELECT RAISE(ABORT, 'only finished runs can be deleted'); END;

-- When an artifact was last stored (a put of existing bytes touches it), so garbage
-- collection never takes an artifact a writer is about to reference.
ALTER TABLE artifacts ADD COLUMN touched_at INTEGER NOT NULL DEFAULT 0;
UPDATE artifacts SET touched_at = created_at;
