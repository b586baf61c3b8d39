-- Two checks every task insert paid for, with nothing left to protect (measured: together
-- ~20% of the writer's time per appended task, the ledger's durable enqueue rate bound):
--
-- 1. CHECK (json_valid(spec)): the ledger writes spec only as serde's serialization of a
--    TaskSpec, and reads it back the same way, so a spec that is not JSON fails loudly at
--    read (a conversion error naming the column); re-parsing every spec at insert bought
--    nothing the reader does not already check.
-- 2. UNIQUE (run_id, idx): idx is the run's own counter, taken in the same transaction that
--    inserts the task; a second index keyed by run id on every row costs an index insert per
--    task. Claims use tasks_queued (run_id, idx) for queued tasks; a run's whole task list is
--    read through the key index (run_id, name, task_key) and sorted.
--
-- The table is rebuilt (SQLite drops neither constraint in place), as in 0008.
DROP TRIGGER attempts_append_only_d;

CREATE TABLE tasks_rebuilt (
    id               INTEGER PRIMARY KEY,
    task_key         TEXT NOT NULL CHECK (length(task_key) = 64),
    run_id           TEXT NOT NULL REFERENCES runs(id),
    idx              INTEGER NOT NULL,
    name             TEXT NOT NULL,
    partition_key    TEXT NOT NULL,
    spec             TEXT NOT NULL,
    -- Not `status IN (...)`: SQLite builds an ephemeral index for an IN list on every insert.
    status           TEXT NOT NULL CHECK (status = 'queued' OR status = 'leased' OR status = 'succeeded'
                                          OR status = 'failed' OR status = 'canceled'),
    attempt          INTEGER NOT NULL DEFAULT 0,
    budget_base      INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    err_code         TEXT,
    exit_status      INTEGER,
    stdout_sha256    TEXT REFERENCES artifacts(sha256),
    stderr_sha256    TEXT REFERENCES artifacts(sha256),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    pub_seq          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, name, task_key),
    CHECK ((status = 'leased') = (lease_owner IS NOT NULL))
) STRICT;
INSERT INTO tasks_rebuilt SELECT id, task_key, run_id, idx, name, partition_key, spec, status, attempt, budget_base,
                                 not_before, lease_owner, lease_expires_at, err_code, exit_status, stdout_sha256,
                                 stderr_sha256, created_at, updated_at, pub_seq
    FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_rebuilt RENAME TO tasks;
CREATE INDEX tasks_queued ON tasks(run_id, idx) WHERE status = 'queued';
CREATE INDEX tasks_leased ON tasks(lease_expires_at) WHERE status = 'leased';

CREATE TRIGGER attempts_append_only_d BEFORE DELETE ON attempts
    WHEN (SELECT r.status FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id = OLD.task_id)
         NOT IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
    BEGIN SELECT RAISE(ABORT, 'attempts is append-only while its run is not finished'); END;
