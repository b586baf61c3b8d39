//! The ledger operations snapshots need: WAL checkpoint, online backup, and the integrity check.
//!
//! Every connection here is opened without `SQLITE_OPEN_CREATE` on the source, so a
//! missing ledger is an error instead of a new empty database.

use crate::error::{Result, SnapshotError};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::{Duration, Instant};

/// Pause before retrying a backup step that found the ledger locked.
const BACKUP_RETRY_MS: u64 = 50;

fn open_existing(path: &Path) -> Result<Connection> {
    if !path.exists() {
        return Err(SnapshotError::NoLedger(path.display().to_string()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| SnapshotError::db(path.display(), e))?;
    // Wait as long as the ledger's own connections do for a writer to commit.
    conn.busy_timeout(Duration::from_millis(machina_ledger::BUSY_TIMEOUT_MS))
        .map_err(|e| SnapshotError::db(path.display(), e))?;
    Ok(conn)
}

/// `PRAGMA wal_checkpoint(TRUNCATE)`: copy every committed WAL frame into the database
/// file and empty the WAL, so a snapshot of the directory opens without WAL recovery.
///
/// Returns whether it completed. A checkpoint that a busy reader or writer kept from
/// finishing is not an error: the snapshot is still crash-consistent (SQLite recovers
/// the WAL when it is opened), just not as tidy.
pub fn checkpoint_truncate(path: &Path) -> Result<bool> {
    let conn = open_existing(path)?;
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| SnapshotError::db(format_args!("checkpoint of {}", path.display()), e))?;
    if busy != 0 {
        tracing::warn!(ledger = %path.display(), wal_frames = log, checkpointed = done,
            "the WAL checkpoint before the snapshot could not finish (the ledger is busy); the snapshot is still consistent");
    }
    Ok(busy == 0)
}

/// Copy the ledger at `src` to a new database at `dst` with SQLite's online backup, in a
/// single step: one read transaction sees one committed state, and in WAL mode writers
/// carry on meanwhile (a multi-step backup would restart whenever another process wrote).
pub fn backup(src: &Path, dst: &Path) -> Result<()> {
    let src_conn = open_existing(src)?;
    let mut dst_conn = Connection::open(dst).map_err(|e| SnapshotError::db(dst.display(), e))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let ctx = || format!("backup of {} to {}", src.display(), dst.display());
        let backup = Backup::new(&src_conn, &mut dst_conn).map_err(|e| SnapshotError::db(ctx(), e))?;
        let deadline = Instant::now() + Duration::from_millis(machina_ledger::BUSY_TIMEOUT_MS);
        // -1: all pages in one step (rusqlite's run_to_completion only takes positive steps).
        loop {
            match backup.step(-1).map_err(|e| SnapshotError::db(ctx(), e))? {
                StepResult::Done => break,
                StepResult::More => {}
                _ if Instant::now() >= deadline => {
                    return Err(SnapshotError::Db(format!("{}: the ledger stayed locked; retry later", ctx())));
                }
                _ => std::thread::sleep(Duration::from_millis(BACKUP_RETRY_MS)),
            }
        }
    }
    dst_conn.close().map_err(|(_, e)| SnapshotError::db(dst.display(), e))?;
    std::fs::File::open(dst).and_then(|f| f.sync_all()).map_err(|e| SnapshotError::io_at("cannot fsync", dst, e))
}

/// `PRAGMA quick_check` on the ledger at `path`; returns its schema version (`user_version`).
///
/// Opening it also replays a WAL left in the snapshot, which is what the services will
/// do on start, so a ledger that passes here is one they can open.
pub fn verify(path: &Path) -> Result<i64> {
    let conn = open_existing(path)?;
    let ctx = |e| SnapshotError::db(format_args!("checking {}", path.display()), e);
    let mut stmt = conn.prepare("PRAGMA quick_check").map_err(ctx)?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(ctx)?
        .take(10)
        .collect::<rusqlite::Result<_>>()
        .map_err(ctx)?;
    if problems != ["ok"] {
        return Err(SnapshotError::Integrity(format!("{}: {}", path.display(), problems.join("; "))));
    }
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(ctx)
}

/// The schema version (`user_version`) of the ledger at `path`.
pub fn schema_version(path: &Path) -> Result<i64> {
    let conn = open_existing(path)?;
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| SnapshotError::db(path.display(), e))
}
