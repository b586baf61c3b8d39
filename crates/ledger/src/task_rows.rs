//! Inserting a run's queued tasks, many rows per `INSERT` statement.
//!
//! Every task a run gets comes through here: a plan's fan-out and every append. The writer
//! thread is the one thing every write waits for, and with one row per statement much of its
//! time per task went to SQLite's per-statement work (opening a cursor on the table and on
//! each index, halting and resetting the statement, finding the table's last rowid again).
//! So rows go in up to [`CHUNK_ROWS`] per statement, the columns shared by the whole fan-out
//! (run, partition, time, publication sequence) bound once per statement.
//!
//! The statements are `INSERT OR FAIL`: a duplicate task key stops the statement where it
//! is, keeping the rows before it, so their count names the duplicate without inserting the
//! chunk again row by row. Those rows never outlive the error: a failed insert fails its
//! whole job, which the writer rolls back (alone, or to the job's savepoint). SQLite still
//! keeps a statement journal for each multi-row statement, because the foreign key on
//! `run_num` could abort it.
//!
//! A row names its run by number and holds its key as 32 bytes (migration 0010): the
//! bytes of pages each task takes are what SQLite's time on an append follows.

use machina_core::{Step, TaskSpec, task_key_digest};
use rusqlite::Connection;
use std::fmt::Write as _;
use std::sync::LazyLock;

use crate::error::{LedgerError, Result};

/// Statement sizes, largest first: a fan-out of n tasks takes the fewest statements.
const CHUNK_ROWS: [usize; 4] = [64, 16, 4, 1];
/// Parameters every row of a statement shares: ?1 run number, ?2 partition, ?3 now, ?4 pub_seq.
const SHARED_PARAMS: usize = 4;
/// Parameters of each row: key, idx, name, spec.
const ROW_PARAMS: usize = 4;

/// The `INSERT` of each size in [`CHUNK_ROWS`] (built once: the statement cache is keyed by it).
static INSERT_SQL: LazyLock<[String; CHUNK_ROWS.len()]> = LazyLock::new(|| CHUNK_ROWS.map(insert_sql));

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR FAIL INTO tasks(task_key, run_num, idx, name, partition_key, spec, status, created_at, updated_at, pub_seq) VALUES ",
    );
    for r in 0..rows {
        let p = SHARED_PARAMS + r * ROW_PARAMS;
        let sep = if r == 0 { "" } else { "," };
        // Writing into a String cannot fail.
        let _ = write!(sql, "{sep}(?{}, ?1, ?{}, ?{}, ?2, ?{}, 'queued', ?3, ?3, ?4)", p + 1, p + 2, p + 3, p + 4);
    }
    sql
}

/// A task's column values that follow from its spec, its run and the run's intent alone:
/// what a client appending tasks can compute before its write reaches the writer thread.
pub(crate) struct TaskRow {
    key: [u8; 32],
    spec_json: String,
}

impl TaskRow {
    pub(crate) fn encode(intent_id: &str, run_id: &str, spec: &TaskSpec) -> Result<Self> {
        Ok(Self {
            key: task_key_digest(intent_id, run_id, Step::Execute, spec),
            spec_json: serde_json::to_string(spec)?,
        })
    }
}

/// The run that tasks are inserted into.
pub(crate) struct Target<'a> {
    /// The run's number (`runs.num`).
    pub(crate) run_num: i64,
    pub(crate) partition_key: &'a str,
    /// The run's tasks so far: the first new task's idx.
    pub(crate) first_idx: i64,
    pub(crate) now: i64,
    /// The publication sequence the tasks are staged under (publication.rs).
    pub(crate) staged: i64,
}

/// One task to insert: its name and its row.
pub(crate) type NewTask<'a> = (&'a str, &'a TaskRow);

/// Insert `tasks` as queued tasks numbered from `target.first_idx`, in order.
/// Runs inside the caller's transaction, which must be rolled back if this fails.
pub(crate) fn insert(c: &Connection, target: &Target<'_>, tasks: &[NewTask<'_>]) -> Result<()> {
    // Outside a transaction, a failed OR FAIL statement would commit the rows before the failure.
    debug_assert!(!c.is_autocommit(), "task rows are inserted inside a write transaction");
    let mut done = 0;
    while done < tasks.len() {
        let left = tasks.len() - done;
        let size = CHUNK_ROWS.iter().position(|&n| n <= left).expect("CHUNK_ROWS ends with 1");
        let chunk = &tasks[done..done + CHUNK_ROWS[size]];
        let first_idx = target.first_idx + done as i64;
        match insert_chunk(c, size, target, first_idx, chunk) {
            Ok(()) => {}
            Err(rusqlite::Error::SqliteFailure(f, _)) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
                // OR FAIL kept the rows before the duplicate: it is the next one.
                let inserted = usize::try_from(c.changes()).unwrap_or(0);
                let key = chunk.get(inserted).map_or_else(|| "?".into(), |(_, row)| hex::encode(row.key));
                return Err(LedgerError::Conflict(format!(
                    "duplicate task key {key}: the run already has this task, or the request repeats it"
                )));
            }
            Err(other) => return Err(other.into()),
        }
        done += chunk.len();
    }
    Ok(())
}

/// Insert `chunk` with the statement of `CHUNK_ROWS[size]` rows.
fn insert_chunk(
    c: &Connection,
    size: usize,
    t: &Target<'_>,
    first_idx: i64,
    chunk: &[NewTask<'_>],
) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(&INSERT_SQL[size])?;
    stmt.raw_bind_parameter(1, t.run_num)?;
    stmt.raw_bind_parameter(2, t.partition_key)?;
    stmt.raw_bind_parameter(3, t.now)?;
    stmt.raw_bind_parameter(4, t.staged)?;
    for (r, (name, row)) in chunk.iter().enumerate() {
        let p = SHARED_PARAMS + r * ROW_PARAMS;
        stmt.raw_bind_parameter(p + 1, row.key.as_slice())?;
        stmt.raw_bind_parameter(p + 2, first_idx + r as i64)?;
        stmt.raw_bind_parameter(p + 3, *name)?;
        stmt.raw_bind_parameter(p + 4, row.spec_json.as_str())?;
    }
    stmt.raw_execute().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_statement_numbers_its_rows_parameters_after_the_shared_ones() {
        assert_eq!(
            insert_sql(2).split_once("VALUES ").unwrap().1,
            "(?5, ?1, ?6, ?7, ?2, ?8, 'queued', ?3, ?3, ?4),(?9, ?1, ?10, ?11, ?2, ?12, 'queued', ?3, ?3, ?4)"
        );
        assert!(INSERT_SQL[0].ends_with("(?257, ?1, ?258, ?259, ?2, ?260, 'queued', ?3, ?3, ?4)"));
    }
}
