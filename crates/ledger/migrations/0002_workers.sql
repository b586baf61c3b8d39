-- Workers announce themselves and refresh seen_at while they run (WorkersOnline);
-- a worker that stops cleanly deletes its row, one that dies ages out.
CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    pid        INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) STRICT;
