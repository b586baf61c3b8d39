-- Permission leases: single-use tokens an admin issues so that one task may use one tool of a
-- tier above the free tier. Only the token's sha256 is stored; consuming is one UPDATE, so two
-- tasks presenting the same token cannot both win. A task re-run after a crash under the same
-- task_key may present its token again (consumed_by matches).
CREATE TABLE permission_leases (
    id            TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE CHECK (length(token_sha256) = 64),
    tool          TEXT NOT NULL,
    tier          INTEGER NOT NULL CHECK (tier BETWEEN 0 AND 3),
    issued_by     TEXT NOT NULL,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    consumed_at   INTEGER,
    consumed_by   TEXT,
    revoked_at    INTEGER,
    CHECK ((consumed_at IS NULL) = (consumed_by IS NULL))
) STRICT;
CREATE INDEX permission_leases_by_expiry ON permission_leases(expires_at);
