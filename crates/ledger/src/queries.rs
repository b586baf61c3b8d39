//! Read-only queries (run on reader connections, off the async threads).

use machina_core::RunStatus;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{LedgerError, Result};
use crate::model::{
    AttemptRecord, EventRecord, RUN_COLS, RunDetail, RunRecord, Stats, StepRecord, TASK_COLS, TaskRecord, json_col,
    parse_col,
};
use crate::runs::load_run;

/// Filter and page for listing runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs in this state.
    pub status: Option<RunStatus>,
    /// Only runs in this partition.
    pub partition_key: Option<String>,
    /// Runs older than this run id (the previous page's last id).
    pub before: Option<String>,
    /// Page size.
    pub limit: u32,
}

pub(crate) fn run_detail(c: &Connection, id: &str) -> Result<RunDetail> {
    let run = load_run(c, id)?;
    let steps = c
        .prepare_cached(
            "SELECT step, outcome, generation, err_code, detail, at FROM run_steps WHERE run_id = CAST(?1 AS TEXT) ORDER BY id",
        )?
        .query_map([id], |r| {
            Ok(StepRecord {
                step: parse_col(r, 0)?,
                outcome: parse_col(r, 1)?,
                generation: r.get(2)?,
                err_code: r.get(3)?,
                detail: r.get(4)?,
                at: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let tasks = c
        .prepare_cached(&format!(
            "SELECT {TASK_COLS} FROM tasks WHERE run_num = (SELECT num FROM runs WHERE id = ?1) ORDER BY idx"
        ))?
        .query_map([id], TaskRecord::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(RunDetail { run, steps, tasks })
}

pub(crate) fn list_runs(c: &Connection, f: &RunFilter) -> Result<Vec<RunRecord>> {
    let sql = format!(
        "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR partition_key = ?2)
         AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
    );
    let rows = c
        .prepare_cached(&sql)?
        .query_map(params![f.status.map(|s| s.as_str()), f.partition_key, f.before, f.limit], RunRecord::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub(crate) fn events(c: &Connection, run_id: &str, after: i64, limit: u32) -> Result<Vec<EventRecord>> {
    load_run(c, run_id)?;
    let rows = c
        .prepare_cached(
            "SELECT seq, kind, data, at FROM events WHERE run_id = CAST(?1 AS TEXT) AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![run_id, after, limit], |r| {
            Ok(EventRecord { seq: r.get(0)?, kind: r.get(1)?, data: json_col(r, 2)?, at: r.get(3)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub(crate) fn attempts(c: &Connection, task_key: &str) -> Result<Vec<AttemptRecord>> {
    let rows: Vec<AttemptRecord> = c
        .prepare_cached(
            "SELECT task_key, attempt, owner, outcome, err_code, exit_status, wall_ms FROM attempts
             WHERE task_id = (SELECT id FROM tasks WHERE task_key = unhex(?1)) ORDER BY attempt",
        )?
        .query_map([task_key], |r| {
            Ok(AttemptRecord {
                task_key: r.get(0)?,
                attempt: r.get(1)?,
                owner: r.get(2)?,
                outcome: r.get(3)?,
                err_code: r.get(4)?,
                exit_status: r.get(5)?,
                wall_ms: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub(crate) fn artifact_known(c: &Connection, sha: &str) -> Result<()> {
    let known: bool =
        c.prepare_cached("SELECT EXISTS(SELECT 1 FROM artifacts WHERE sha256 = ?1)")?.query_row([sha], |r| r.get(0))?;
    if known { Ok(()) } else { Err(LedgerError::not_found("artifact", sha)) }
}

pub(crate) fn has_work(c: &Connection, now: i64) -> Result<bool> {
    // The same conditions claim_work and reclaim apply, so an idle worker does not take
    // the write lock for work it cannot have.
    Ok(c.prepare_cached(
        "SELECT EXISTS(SELECT 1 FROM runs r JOIN partitions p ON p.key = r.partition_key
                           WHERE r.status = 'queued' AND p.paused = 0)
                 OR EXISTS(SELECT 1 FROM runs r JOIN partitions p ON p.key = r.partition_key
                           WHERE r.status = 'executing' AND p.paused = 0 AND r.leased_tasks < r.concurrency
                           AND EXISTS(SELECT 1 FROM tasks t WHERE t.run_num = r.num AND t.status = 'queued'
                                      AND t.not_before <= ?1))
                 OR EXISTS(SELECT 1 FROM tasks WHERE status = 'leased' AND lease_expires_at < ?1)
                 OR EXISTS(SELECT 1 FROM runs WHERE status = 'compiling' AND lease_expires_at < ?1)",
    )?
    .query_row([now], |r| r.get(0))?)
}

/// Runs whose task counters disagree with their tasks (must be 0; checked by tests and verify).
pub(crate) fn counter_drift(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached(
        "SELECT COUNT(*) FROM runs r WHERE
               r.queued_tasks  != (SELECT COUNT(*) FROM tasks t WHERE t.run_num = r.num AND t.status = 'queued')
            OR r.leased_tasks  != (SELECT COUNT(*) FROM tasks t WHERE t.run_num = r.num AND t.status = 'leased')
            OR r.pending_tasks != (SELECT COUNT(*) FROM tasks t WHERE t.run_num = r.num AND t.status != 'succeeded')
            OR r.task_count    != (SELECT COUNT(*) FROM tasks t WHERE t.run_num = r.num)
            OR r.event_seq     != (SELECT COUNT(*) FROM events e WHERE e.run_id = r.id)",
    )?
    .query_row([], |r| r.get(0))?)
}

/// A run's status alone (cheap, for watchers).
pub(crate) fn run_status(c: &Connection, id: &str) -> Result<RunStatus> {
    c.prepare_cached("SELECT status FROM runs WHERE id = ?1")?
        .query_row([id], |r| parse_col(r, 0))
        .optional()?
        .ok_or_else(|| LedgerError::not_found("run", id))
}

fn grouped(c: &Connection, sql: &str) -> Result<Vec<(String, i64)>> {
    Ok(c.prepare_cached(sql)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?)
}

pub(crate) fn stats(c: &Connection, now: i64) -> Result<Stats> {
    let one = |sql: &str| -> Result<i64> { Ok(c.prepare_cached(sql)?.query_row([], |r| r.get(0))?) };
    Ok(Stats {
        runs: grouped(c, "SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")?,
        tasks: grouped(c, "SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY status")?,
        attempts: c
            .prepare_cached(
                "SELECT outcome, COALESCE(err_code, ''), COUNT(*) FROM attempts GROUP BY 1, 2 ORDER BY 1, 2",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?,
        events: one("SELECT COUNT(*) FROM events")?,
        artifacts: c
            .prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM artifacts")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?,
        dedup_entries: c
            .prepare_cached("SELECT COUNT(*) FROM dedup WHERE expires_at > ?1")?
            .query_row([now], |r| r.get(0))?,
        duplicate_receipts: one("SELECT (SELECT COUNT(*) FROM receipts WHERE seen > 1)
                  + (SELECT COUNT(*) FROM (SELECT 1 FROM receipts GROUP BY effect_key HAVING COUNT(*) > 1))")?,
    })
}
