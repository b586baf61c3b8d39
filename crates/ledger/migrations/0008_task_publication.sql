-- 1. Task keys are unique through an index clustered by run and task name, not by the key alone.
--
-- A task key hashes its run id and its spec (name included), so two tasks can share a key only
-- if they share the run and the name: UNIQUE (run_id, name, task_key) enforces exactly what
-- UNIQUE (task_key) did. The key is a sha256, so an index led by it takes every insert on a
-- random page (a 4 KiB WAL frame per task once the index outgrows a batch); led by run and
-- name, a fan-out's inserts land together. The table is rebuilt (SQLite cannot drop an inline
-- UNIQUE); the migration runner turns foreign keys off around it and checks them before COMMIT.
--
-- 2. A task starts only once the commit that created it is on disk (publication).
-- A batch that creates or requeues tasks stamps them with the next staged_seq; once an
-- fdatasync of the WAL that began after that commit has returned, durable_seq is raised to it
-- (any process may do so: one sync covers every commit before it). A claim of a task with
-- pub_seq > durable_seq is handed out only after a sync that began after the claim. So a
-- worker never runs a task that a power cut could take back, and the writer does not wait
-- for the disk to make sure.
DROP TRIGGER attempts_append_only_d;

CREATE TABLE tasks_rebuilt (
    id               INTEGER PRIMARY KEY,
    task_key         TEXT NOT NULL CHECK (length(task_key) = 64),
    run_id           TEXT NOT NULL REFERENCES runs(id),
    idx              INTEGER NOT NULL,
    name             TEXT NOT NULL,
    partition_key    TEXT NOT NULL,
    spec             TEXT NOT NULL CHECK (json_valid(spec)),
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
    UNIQUE (run_id, idx),
    UNIQUE (run_id, name, task_key),
    CHECK ((status = 'leased') = (lease_owner IS NOT NULL))
) STRICT;
INSERT INTO tasks_rebuilt (id, task_key, run_id, idx, name, partition_key, spec, status, attempt, budget_base,
                           not_before, lease_owner, lease_expires_at, err_code, exit_status, stdout_sha256,
                           stderr_sha256, created_at, updated_at)
    SELECT id, task_key, run_id, idx, json_extract(spec, '$.name'), partition_key, spec, status, attempt,
           budget_base, not_before, lease_owner, lease_expires_at, err_code, exit_status, stdout_sha256,
           stderr_sha256, created_at, updated_at
    FROM tasks;
DROP TABLE tasks;
ALTER TABLE tasks_rebuilt RENAME TO tasks;
CREATE INDEX tasks_queued ON tasks(run_id, idx) WHERE status = 'queued';
CREATE INDEX tasks_leased ON tasks(lease_expires_at) WHERE status = 'leased';

CREATE TRIGGER attempts_append_only_d BEFORE DELETE ON attempts
    WHEN (SELECT r.status FROM tasks t JOIN runs r ON r.id = t.run_id WHERE t.id = OLD.task_id)
         NOT IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
    BEGIN SELECT RAISE(ABORT, 'attempts is append-only while its run is not finished'); END;

CREATE TABLE publication (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    staged_seq  INTEGER NOT NULL,
    durable_seq INTEGER NOT NULL,
    CHECK (durable_seq <= staged_seq)
) STRICT;
INSERT INTO publication (id, staged_seq, durable_seq) VALUES (1, 0, 0);
