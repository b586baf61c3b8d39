//! Opening the database: pragmas, numbered migrations, and the version check.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

use crate::error::{LedgerError, Result};

/// How long a writer waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// Page cache per connection, in KiB. Not larger: a B-tree split renumbers pages through a
/// scratch page number past the end of the file, so nearly every commit that split a page
/// ends with SQLite scanning the whole cache's hash table (pcache1TruncateUnsafe); with 32
/// MiB that was ~5% of the writer's time. The hot pages of appends and claims fit in this.
const CACHE_KIB: i64 = 8 * 1024;
/// Memory-mapped I/O window per connection, in bytes: off. With several processes writing,
/// each transaction that finds the file grown remaps it (munmap, TLB shootdowns, faults on
/// every page touched again); reading through the page cache measured cheaper.
const MMAP_BYTES: i64 = 0;
/// WAL pages after which a commit checkpoints by itself. The writer's connection replaces
/// this with its own WAL hook (checkpoint.rs); it stays on the others as a backstop.
const AUTOCHECKPOINT_BACKSTOP_PAGES: i64 = 50_000;

/// Prepared statements kept per connection (the ledger uses fewer distinct ones).
const STATEMENT_CACHE: usize = 256;

/// The numbered migrations; schema version N is the first N applied.
const MIGRATION_SQL: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_workers.sql"),
    include_str!("../migrations/0003_maintenance.sql"),
    include_str!("../migrations/0004_worker_sandbox.sql"),
    include_str!("../migrations/0005_nonces.sql"),
    include_str!("../migrations/0006_permission_leases.sql"),
    include_str!("../migrations/0007_arbitration.sql"),
    include_str!("../migrations/0008_task_publication.sql"),
    include_str!("../migrations/0009_lean_task_rows.sql"),
    include_str!("../migrations/0010_compact_task_keys.sql"),
];

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATION_SQL.len() as i64;

/// Durability of acknowledged writes.
///
/// Every connection runs SQLite's `synchronous = NORMAL` (the WAL is synced at checkpoints);
/// with `Full` the ledger itself `fdatasync`s the WAL after each commit, before handing back
/// any result that needs it (see sync.rs): what `synchronous = FULL` guarantees, without
/// the writer thread waiting for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged write is on disk: it survives power loss.
    Full,
    /// Writes reach the disk at checkpoints: they survive a process crash, not power loss.
    Normal,
}

/// Pragmas as read back from a live connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pragmas {
    /// `journal_mode` (expect "wal").
    pub journal_mode: String,
    /// SQLite's `synchronous` (1 = NORMAL: durability is the ledger's own sync, below).
    pub synchronous: i64,
    /// Whether the ledger syncs the WAL before acknowledging a write ([`Durability::Full`]).
    pub durable_commits: bool,
    /// `foreign_keys` (1 = on).
    pub foreign_keys: i64,
    /// `busy_timeout` in milliseconds.
    pub busy_timeout_ms: i64,
    /// The query planner stability guarantee (`SQLITE_DBCONFIG_ENABLE_QPSG`): statements keep
    /// their plan whatever is bound to them.
    pub stable_plans: bool,
}

pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| LedgerError::Db(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LedgerError::Db(format!(
            "{}: could not switch to WAL journal mode (got {mode}); is the filesystem local?",
            path.display()
        )));
    }
    // temp_store=MEMORY keeps the per-operation savepoint journals of group commit off disk;
    // a larger page cache keeps hot index pages out of pread(); the commit path
    // leaves checkpoints to the background checkpointer (see checkpoint.rs), with a high
    // automatic threshold kept only as a backstop.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{CACHE_KIB}; PRAGMA mmap_size = {MMAP_BYTES};
         PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_BACKSTOP_PAGES};"
    ))?;
    // The query planner stability guarantee: a cached statement keeps its plan whatever is
    // bound to it. Without it SQLite re-prepares a statement whenever a parameter its plan
    // looked at changes (an `= ?` term bound to 0 or 1 after a reset, a task id in a join):
    // measured, two re-parses per processed task, a third of the processing rate.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

pub(crate) fn read_pragmas(conn: &Connection, durability: Durability) -> Result<Pragmas> {
    Ok(Pragmas {
        journal_mode: conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
        synchronous: conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
        foreign_keys: conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
        busy_timeout_ms: conn.query_row("PRAGMA busy_timeout", [], |r| r.get(0))?,
        stable_plans: conn.db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG)?,
        durable_commits: durability == Durability::Full,
    })
}

/// Bring the schema to [`SCHEMA_VERSION`], refusing a database from a newer build.
///
/// Migrations are numbered files applied in order inside one `BEGIN IMMEDIATE`
/// transaction, tracked by `PRAGMA user_version`; several processes starting
/// at once serialize on the write lock and the later ones find nothing to do.
/// (Hand-rolled: rusqlite_migration has no release for rusqlite 0.41.)
///
/// Foreign keys are off while migrations run (a migration may rebuild a table that others
/// reference, which SQLite allows only so) and checked as a whole before COMMIT.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, app_version: &str) -> Result<()> {
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let migrated = migrate_unchecked(conn, path, app_version);
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    migrated
}

fn migrate_unchecked(conn: &mut Connection, path: &Path, app_version: &str) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(LedgerError::SchemaTooNew { path: path.display().to_string(), found, supported: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATION_SQL.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)
            .map_err(|e| LedgerError::Db(format!("{}: migration {:04} failed: {e}", path.display(), i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    // Checked only after migrating (a whole-file scan): an up-to-date ledger opens at once.
    let migrated = found < SCHEMA_VERSION;
    let dangling: i64 = match migrated {
        true => tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?,
        false => 0,
    };
    if dangling > 0 {
        return Err(LedgerError::Db(format!(
            "{}: {dangling} rows would violate foreign keys after migrating from schema {found} to \
             {SCHEMA_VERSION}; nothing was changed (PRAGMA foreign_key_check lists them)",
            path.display()
        )));
    }
    for (key, value) in [("schema_version", SCHEMA_VERSION.to_string()), ("app_version", app_version.to_string())] {
        tx.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, &value],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger left at schema 7 (task keys unique on their own) with a run, two tasks and an
    /// attempt of one of them.
    fn schema_7(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        for sql in &MIGRATION_SQL[..7] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version = 7;
             INSERT INTO intents VALUES ('i1', 'goal', '{}', '{}', 1);
             INSERT INTO partitions(key) VALUES ('p');
             INSERT INTO runs(id, intent_id, recipe, partition_key, workload, concurrency, status, created_at, updated_at,
                              task_count, queued_tasks, pending_tasks)
                 VALUES ('r1', 'i1', 'demo', 'p', '{}', 1, 'executing', 1, 1, 2, 1, 2);
             INSERT INTO tasks(id, task_key, run_id, idx, partition_key, spec, status, attempt, lease_owner, created_at, updated_at)
                 VALUES (1, printf('%064d', 1), 'r1', 0, 'p', '{\"name\":\"a\"}', 'leased', 1, 'w', 1, 1),
                        (2, printf('%064d', 2), 'r1', 1, 'p', '{\"name\":\"b\"}', 'queued', 0, NULL, 1, 1);
             INSERT INTO attempts(task_id, task_key, attempt, owner, outcome, wall_ms, ended_at)
                 VALUES (1, printf('%064d', 1), 1, 'w', 'failed', 5, 2);",
        )
        .unwrap();
        c
    }

    #[test]
    fn migrating_a_schema_7_ledger_keeps_its_tasks_and_their_key_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        drop(schema_7(&path));
        let mut c = open_connection(&path).unwrap();
        migrate(&mut c, &path, "test").unwrap();
        assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), SCHEMA_VERSION);
        assert_eq!(c.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0)).unwrap(), 1, "back on");
        let tasks: Vec<(i64, String, String, i64)> = c
            .prepare("SELECT id, name, status, pub_seq FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(tasks, vec![(1, "a".into(), "leased".into(), 0), (2, "b".into(), "queued".into(), 0)]);
        // The run got a number, and the tasks read by hand as they did: run id, key in hex.
        assert_eq!(c.query_row("SELECT num FROM runs WHERE id = 'r1'", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
        let listed: Vec<(String, String)> = c
            .prepare("SELECT task_key, run_id FROM task_list ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(listed, vec![(format!("{:064}", 1), "r1".into()), (format!("{:064}", 2), "r1".into())]);
        // A run inserted without its number is refused, not numbered 0.
        let unnumbered = c
            .execute(
                "INSERT INTO runs(id, intent_id, recipe, partition_key, workload, concurrency, status, created_at, updated_at)
                 VALUES ('r2', 'i1', 'demo', 'p', '{}', 1, 'queued', 1, 1)",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(unnumbered.contains("runs.num must be given"), "{unnumbered}");
        // Attempts still point at their task, and deleting it is still refused while its run runs.
        assert_eq!(
            c.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get::<_, i64>(0)).unwrap(),
            0
        );
        let err = c.execute("DELETE FROM attempts", []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{err}");
        // A second task under an existing key in the same run is refused; published tasks are claimable.
        let dup = c
            .execute(
                "INSERT INTO tasks(task_key, run_num, idx, name, partition_key, spec, status, created_at, updated_at)
                 VALUES (unhex(printf('%064d', 2)), 1, 2, 'b', 'p', '{}', 'queued', 1, 1)",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(dup.contains("UNIQUE"), "{dup}");
        assert_eq!(
            c.query_row("SELECT staged_seq, durable_seq FROM publication", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap(),
            (0i64, 0i64)
        );
    }

    #[test]
    fn migrating_a_schema_8_ledger_keeps_staged_tasks_staged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let c = schema_7(&path);
        // As migrate() applies it: foreign keys off around the rebuild.
        c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
        c.execute_batch(MIGRATION_SQL[7]).unwrap();
        // Task 2 was committed by a process that died before its sync: still staged.
        c.execute_batch(
            "PRAGMA user_version = 8;
             UPDATE publication SET staged_seq = 5, durable_seq = 4;
             UPDATE tasks SET pub_seq = 5 WHERE id = 2;",
        )
        .unwrap();
        drop(c);
        let mut c = open_connection(&path).unwrap();
        migrate(&mut c, &path, "test").unwrap();
        let rows: Vec<(i64, String, i64, String, i64)> = c
            .prepare("SELECT id, lower(hex(task_key)), idx, name, pub_seq FROM tasks ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let key = |n: i64| format!("{n:064}");
        assert_eq!(rows, vec![(1, key(1), 0, "a".into(), 0), (2, key(2), 1, "b".into(), 5)]);
        // The key rule still holds after the rebuild; the attempt still points at its task.
        let dup = c
            .execute(
                "INSERT INTO tasks(task_key, run_num, idx, name, partition_key, spec, status, created_at, updated_at)
                 VALUES (unhex(printf('%064d', 2)), 1, 2, 'b', 'p', '{}', 'queued', 1, 1)",
                [],
            )
            .unwrap_err()
            .to_string();
        assert!(dup.contains("UNIQUE"), "{dup}");
        let n: i64 = c.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn cached_statements_keep_their_plan_whatever_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let reprepares = |mut c: Connection, path: &Path| {
            migrate(&mut c, path, "test").unwrap();
            // A claim's query, run as a worker runs it: a statement from the cache, reset, and
            // bound to the run's number (often 1) and the time.
            let sql = "SELECT id FROM tasks WHERE run_num = ?1 AND status = 'queued' AND not_before <= ?2
                       ORDER BY idx LIMIT 1";
            for now in 1..=3i64 {
                c.prepare_cached(sql).unwrap().query([1, now]).unwrap().next().unwrap();
            }
            c.prepare_cached(sql).unwrap().get_status(rusqlite::StatementStatus::RePrepare)
        };
        let path = dir.path().join("ledger.db");
        assert_eq!(reprepares(open_connection(&path).unwrap(), &path), 0);
        // What the setting prevents (so this test can tell).
        let plain = dir.path().join("plain.db");
        assert!(reprepares(Connection::open(&plain).unwrap(), &plain) > 0, "SQLite re-prepares by default");
    }

    #[test]
    fn a_migration_that_leaves_dangling_references_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        let c = schema_7(&path);
        // An attempt of a task that does not exist (foreign keys were off when it was written).
        c.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO attempts(task_id, task_key, attempt, owner, outcome, wall_ms, ended_at)
             VALUES (99, printf('%064d', 9), 1, 'w', 'failed', 5, 2);",
        )
        .unwrap();
        drop(c);
        let mut c = open_connection(&path).unwrap();
        let err = migrate(&mut c, &path, "test").unwrap_err().to_string();
        assert!(err.contains("violate foreign keys"), "{err}");
        assert_eq!(c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)).unwrap(), 7, "rolled back");
        assert_eq!(c.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0)).unwrap(), 1);
    }
}
