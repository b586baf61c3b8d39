-- machina ledger, schema 1. Timestamps are milliseconds since the Unix epoch.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE intents (
    id          TEXT PRIMARY KEY,
    goal        TEXT NOT NULL,
    inputs      TEXT NOT NULL CHECK (json_valid(inputs)),
    constraints TEXT NOT NULL CHECK (json_valid(constraints)),
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE artifacts (
    sha256     TEXT PRIMARY KEY CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    size       INTEGER NOT NULL CHECK (size >= 0),
    media_type TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE partitions (
    key            TEXT PRIMARY KEY,
    last_claim_seq INTEGER NOT NULL DEFAULT 0,
    paused         INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1))
) STRICT;

CREATE TABLE runs (
    id                   TEXT PRIMARY KEY,
    intent_id            TEXT NOT NULL REFERENCES intents(id),
    recipe               TEXT NOT NULL,
    partition_key        TEXT NOT NULL REFERENCES partitions(key),
    workload             TEXT NOT NULL CHECK (json_valid(workload)),
    concurrency          INTEGER NOT NULL CHECK (concurrency >= 1),
    status               TEXT NOT NULL CHECK (status IN ('queued', 'compiling', 'waiting_input',
                             'executing', 'succeeded', 'failed', 'retries_exceeded', 'canceled')),
    last_step            TEXT CHECK (last_step IN ('CompileST', 'DecideST', 'ExecuteST')),
    generation           INTEGER NOT NULL DEFAULT 0,
    err_code             TEXT,
    error_message        TEXT,
    next_action          TEXT,
    plan_json            TEXT,
    plan_sha256          TEXT REFERENCES artifacts(sha256),
    approved_plan_sha256 TEXT REFERENCES artifacts(sha256),
    approved_by          TEXT,
    approved_at          INTEGER,
    lease_owner          TEXT,
    lease_expires_at     INTEGER,
    compile_attempt      INTEGER NOT NULL DEFAULT 0,
    compile_budget_base  INTEGER NOT NULL DEFAULT 0,
    -- Counters kept in step with the tasks table by every write (checked by counter_drift()):
    -- tasks queued, leased, and not yet succeeded; tasks and events ever created.
    queued_tasks         INTEGER NOT NULL DEFAULT 0 CHECK (queued_tasks >= 0),
    leased_tasks         INTEGER NOT NULL DEFAULT 0 CHECK (leased_tasks >= 0),
    pending_tasks        INTEGER NOT NULL DEFAULT 0 CHECK (pending_tasks >= 0),
    task_count           INTEGER NOT NULL DEFAULT 0,
    event_seq            INTEGER NOT NULL DEFAULT 0,
    last_claim_seq       INTEGER NOT NULL DEFAULT 0,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
) STRICT;
CREATE INDEX runs_by_status ON runs(status, created_at);
CREATE INDEX runs_by_partition ON runs(partition_key, status, last_claim_seq);

-- Append-only history of each run's steps.
CREATE TABLE run_steps (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL REFERENCES runs(id),
    step       TEXT NOT NULL CHECK (step IN ('CompileST', 'DecideST', 'ExecuteST')),
    outcome    TEXT NOT NULL CHECK (outcome IN ('started', 'succeeded', 'failed')),
    generation INTEGER NOT NULL,
    err_code   TEXT,
    detail     TEXT,
    at         INTEGER NOT NULL
) STRICT;
CREATE INDEX run_steps_by_run ON run_steps(run_id, id);
CREATE TRIGGER run_steps_append_only_u BEFORE UPDATE ON run_steps
    BEGIN SELECT RAISE(ABORT, 'run_steps is append-only'); END;
CREATE TRIGGER run_steps_append_only_d BEFORE DELETE ON run_steps
    BEGIN SELECT RAISE(ABORT, 'run_steps is append-only'); END;

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY,
    task_key         TEXT NOT NULL UNIQUE CHECK (length(task_key) = 64),
    run_id           TEXT NOT NULL REFERENCES runs(id),
    idx              INTEGER NOT NULL,
    partition_key    TEXT NOT NULL,
    spec             TEXT NOT NULL CHECK (json_valid(spec)),
    status           TEXT NOT NULL CHECK (status IN ('queued', 'leased', 'succeeded', 'failed', 'canceled')),
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
    UNIQUE (run_id, idx),
    CHECK ((status = 'leased') = (lease_owner IS NOT NULL))
) STRICT;
-- Partial indexes: a status change touches only the index of the states it leaves and enters.
CREATE INDEX tasks_queued ON tasks(run_id, idx) WHERE status = 'queued';
CREATE INDEX tasks_leased ON tasks(lease_expires_at) WHERE status = 'leased';

-- Append-only: one row per try of a task. Keyed by the task's row id (claimed in order,
-- so inserts append) rather than the random task_key, which is kept for reading.
CREATE TABLE attempts (
    id          INTEGER PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES tasks(id),
    task_key    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    owner       TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
    err_code    TEXT,
    exit_status INTEGER,
    wall_ms     INTEGER NOT NULL,
    ended_at    INTEGER NOT NULL,
    UNIQUE (task_id, attempt)
) STRICT;
CREATE TRIGGER attempts_append_only_u BEFORE UPDATE ON attempts
    BEGIN SELECT RAISE(ABORT, 'attempts is append-only'); END;
CREATE TRIGGER attempts_append_only_d BEFORE DELETE ON attempts
    BEGIN SELECT RAISE(ABORT, 'attempts is append-only'); END;

-- The exactly-once oracle: every committed effect counts itself; seen > 1 is a bug.
-- Keyed by task row id (one task = one effect key) so commits append.
CREATE TABLE receipts (
    task_id    INTEGER PRIMARY KEY REFERENCES tasks(id),
    effect_key TEXT NOT NULL,
    seen       INTEGER NOT NULL,
    first_at   INTEGER NOT NULL,
    last_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE events (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq    INTEGER NOT NULL,
    kind   TEXT NOT NULL,
    data   TEXT NOT NULL CHECK (json_valid(data)),
    at     INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT, WITHOUT ROWID;

CREATE TABLE dedup (
    request_id  TEXT PRIMARY KEY,
    body_sha256 TEXT NOT NULL,
    status      INTEGER NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX dedup_by_expiry ON dedup(expires_at);
