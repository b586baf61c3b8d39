//! The operator's view of the whole system: workers online, paused
//! partitions, and the overview the D-Bus properties and /metrics report.

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::Result;

/// Counts an operator watches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// Tasks queued and not yet claimed, plus runs waiting to be compiled.
    pub queue_depth: u64,
    /// Runs at the approval gate.
    pub runs_waiting_approval: u64,
    /// Workers seen within the window asked for.
    pub workers_online: u32,
    /// Paused partitions, sorted.
    pub paused_partitions: Vec<String>,
}

/// A worker as it last checked in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRecord {
    /// Worker id (lease owner).
    pub id: String,
    /// Its process id.
    pub pid: u32,
    /// When this process started (ms).
    pub started_at: i64,
    /// Last check-in (ms).
    pub seen_at: i64,
    /// Its per-task sandbox preflight, as it reported it.
    pub sandbox: Option<serde_json::Value>,
}

/// Record that worker `id` (process `pid`, sandbox preflight `sandbox`) is alive now.
pub(crate) fn worker_seen(c: &Connection, id: &str, pid: u32, sandbox: Option<&str>, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO workers(id, pid, started_at, seen_at, sandbox) VALUES (?1, ?2, ?3, ?3, ?4)
         ON CONFLICT(id) DO UPDATE SET seen_at = excluded.seen_at, sandbox = excluded.sandbox,
           started_at = CASE WHEN workers.pid = excluded.pid THEN workers.started_at ELSE excluded.started_at END,
           pid = excluded.pid",
    )?
    .execute(params![id, pid, now, sandbox])?;
    Ok(())
}

/// Workers seen since `online_since`, by id.
pub(crate) fn workers(c: &Connection, online_since: i64) -> Result<Vec<WorkerRecord>> {
    Ok(c.prepare_cached("SELECT id, pid, started_at, seen_at, sandbox FROM workers WHERE seen_at >= ?1 ORDER BY id")?
        .query_map([online_since], |r| {
            let sandbox: Option<String> = r.get(4)?;
            Ok(WorkerRecord {
                id: r.get(0)?,
                pid: r.get(1)?,
                started_at: r.get(2)?,
                seen_at: r.get(3)?,
                sandbox: sandbox.and_then(|s| serde_json::from_str(&s).ok()),
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// Forget worker `id` (it stopped cleanly).
pub(crate) fn worker_gone(c: &Connection, id: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM workers WHERE id = ?1")?.execute([id])?;
    Ok(())
}

/// Pause or resume claims in partition `key` (created if it does not exist yet, so a
/// partition can be paused before its first run arrives).
pub(crate) fn set_paused(c: &Connection, key: &str, paused: bool) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO partitions(key, paused) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET paused = excluded.paused",
    )?
    .execute(params![key, paused as i64])?;
    Ok(())
}

/// The overview, counting workers seen since `online_since`.
pub(crate) fn overview(c: &Connection, online_since: i64) -> Result<Overview> {
    let (queue_depth, runs_waiting_approval): (i64, i64) = c
        .prepare_cached(
            "SELECT COALESCE(SUM(queued_tasks), 0) + COALESCE(SUM(status = 'queued'), 0),
                    COALESCE(SUM(status = 'waiting_input'), 0)
             FROM runs WHERE status IN ('queued', 'waiting_input', 'executing')",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let workers_online: i64 = c
        .prepare_cached("SELECT COUNT(*) FROM workers WHERE seen_at >= ?1")?
        .query_row([online_since], |r| r.get(0))?;
    let paused_partitions = c
        .prepare_cached("SELECT key FROM partitions WHERE paused = 1 ORDER BY key")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Overview {
        queue_depth: queue_depth as u64,
        runs_waiting_approval: runs_waiting_approval as u64,
        workers_online: workers_online as u32,
        paused_partitions,
    })
}
