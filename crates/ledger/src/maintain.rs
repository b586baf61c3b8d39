//! Maintenance and verification: what the hourly machina-maintain run does to
//! keep the ledger small and prove it sound.
//!
//! Pruning removes only FINISHED runs past their retention (the schema's
//! triggers refuse anything else) and artifacts that nothing references and
//! nobody stored recently. Artifact files are deleted inside the same write
//! transaction as their rows, and a put registers its row before writing its
//! file, so a file that a concurrent writer relies on is never removed.

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::artifacts::ArtifactStore;
use crate::{Result, queries};

/// Finished runs deleted per transaction (keeps the write lock short).
pub const PRUNE_BATCH_RUNS: usize = 200;

/// What one prune pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneReport {
    /// Finished runs removed, with their steps, tasks, attempts, receipts and events.
    pub runs: u64,
    /// Intents left without runs, removed.
    pub intents: u64,
    /// Unreferenced artifacts removed (rows and files).
    pub artifacts: u64,
    /// Bytes of artifact files removed.
    pub artifact_bytes: u64,
}

/// One integrity problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Stable name of the check (`quick_check`, `artifact_missing`, `artifact_corrupt`, …).
    pub check: String,
    /// What was found.
    pub detail: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Artifacts whose bytes were hashed this time.
    pub artifacts_checked: u64,
    /// Artifacts in the store.
    pub artifacts_total: u64,
    /// Everything wrong; empty means sound.
    pub violations: Vec<Violation>,
}

impl VerifyReport {
    /// No violation found.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Delete dedup entries and request nonces past their expiry.
pub(crate) fn expire_dedup(c: &Connection, now: i64) -> Result<u64> {
    c.prepare_cached("DELETE FROM nonces WHERE expires_at <= ?1")?.execute([now])?;
    Ok(c.prepare_cached("DELETE FROM dedup WHERE expires_at <= ?1")?.execute([now])? as u64)
}

/// Record a signed request's nonce until `expires_at`; false when it was seen before.
pub(crate) fn use_nonce(c: &Connection, nonce: &str, expires_at: i64) -> Result<bool> {
    Ok(c.prepare_cached("INSERT INTO nonces(nonce, expires_at) VALUES (?1, ?2) ON CONFLICT(nonce) DO NOTHING")?
        .execute(params![nonce, expires_at])?
        == 1)
}

/// Forget workers not seen since `before` (they died without checking out).
pub(crate) fn forget_workers(c: &Connection, before: i64) -> Result<u64> {
    Ok(c.prepare_cached("DELETE FROM workers WHERE seen_at < ?1")?.execute([before])? as u64)
}

/// Delete up to [`PRUNE_BATCH_RUNS`] finished runs last updated before `cutoff`, with their history.
pub(crate) fn prune_runs(c: &Connection, cutoff: i64) -> Result<u64> {
    let runs: Vec<(String, i64)> = c
        .prepare_cached(
            "SELECT id, num FROM runs WHERE status IN ('succeeded', 'failed', 'retries_exceeded', 'canceled')
             AND updated_at < ?1 ORDER BY updated_at LIMIT ?2",
        )?
        .query_map(params![cutoff, PRUNE_BATCH_RUNS as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, num) in &runs {
        // Tasks name their run by number; everything else by id.
        c.prepare_cached("DELETE FROM receipts WHERE task_id IN (SELECT id FROM tasks WHERE run_num = ?1)")?
            .execute([num])?;
        c.prepare_cached("DELETE FROM attempts WHERE task_id IN (SELECT id FROM tasks WHERE run_num = ?1)")?
            .execute([num])?;
        c.prepare_cached("DELETE FROM tasks WHERE run_num = ?1")?.execute([num])?;
        c.prepare_cached("DELETE FROM events WHERE run_id = ?1")?.execute([id])?;
        c.prepare_cached("DELETE FROM run_steps WHERE run_id = ?1")?.execute([id])?;
        c.prepare_cached("DELETE FROM runs WHERE id = ?1")?.execute([id])?;
    }
    Ok(runs.len() as u64)
}

/// Delete intents that no run refers to any more, created before `cutoff`.
pub(crate) fn prune_intents(c: &Connection, cutoff: i64) -> Result<u64> {
    Ok(c.prepare_cached(
        "DELETE FROM intents WHERE created_at < ?1 AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.intent_id = intents.id)",
    )?
    .execute([cutoff])? as u64)
}

/// Delete artifacts (rows, then files, in this transaction) that no run or task references
/// and that were not stored since `touched_before`. Returns (count, bytes).
pub(crate) fn prune_artifacts(c: &Connection, store: &ArtifactStore, touched_before: i64) -> Result<(u64, u64)> {
    let gone: Vec<(String, i64)> = c
        .prepare_cached(
            "DELETE FROM artifacts WHERE touched_at < ?1
               AND NOT EXISTS (SELECT 1 FROM runs WHERE plan_sha256 = artifacts.sha256
                                                    OR approved_plan_sha256 = artifacts.sha256)
               AND NOT EXISTS (SELECT 1 FROM tasks WHERE stdout_sha256 = artifacts.sha256
                                                     OR stderr_sha256 = artifacts.sha256)
             RETURNING sha256, size",
        )?
        .query_map([touched_before], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut bytes = 0u64;
    for (sha, size) in &gone {
        match std::fs::remove_file(store.path_of(sha)) {
            Ok(()) => bytes += *size as u64,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((gone.len() as u64, bytes))
}

/// `PRAGMA quick_check`, the SQL oracles, and the artifacts' bytes: all of them when the store
/// holds at most `sample` artifacts, else the `sample` after `cursor` (a rotating window; the
/// new cursor is returned so successive runs cover the whole store).
pub(crate) fn verify(
    c: &Connection,
    store: &ArtifactStore,
    sample: usize,
    cursor: &str,
    touched_since: i64,
) -> Result<(VerifyReport, String)> {
    let mut report = VerifyReport::default();
    let mut flag = |check: &str, detail: String| report.violations.push(Violation { check: check.into(), detail });
    let quick: Vec<String> =
        c.prepare("PRAGMA quick_check")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if quick != ["ok"] {
        flag("quick_check", quick.join("; "));
    }
    let one = |sql: &str| -> Result<i64> { Ok(c.prepare_cached(sql)?.query_row([], |r| r.get(0))?) };
    let oracles = [
        ("receipt_seen_twice", "SELECT COUNT(*) FROM receipts WHERE seen > 1"),
        (
            "effect_committed_twice",
            "SELECT COUNT(*) FROM (SELECT 1 FROM receipts GROUP BY effect_key HAVING COUNT(*) > 1)",
        ),
        // A key hashes its run and name, so this is the whole rule, read along its index.
        (
            "task_key_twice",
            "SELECT COUNT(*) FROM (SELECT 1 FROM tasks GROUP BY run_num, name, task_key HAVING COUNT(*) > 1)",
        ),
        ("artifact_name", "SELECT COUNT(*) FROM artifacts WHERE length(sha256) != 64 OR sha256 GLOB '*[^0-9a-f]*'"),
    ];
    for (check, sql) in oracles {
        let n = one(sql)?;
        if n != 0 {
            flag(check, format!("{n} row(s)"));
        }
    }
    let drift = queries::counter_drift(c)?;
    if drift != 0 {
        flag("run_counters", format!("{drift} run(s) whose task counters disagree with their tasks"));
    }
    report.artifacts_total = one("SELECT COUNT(*) FROM artifacts")? as u64;
    let all = report.artifacts_total as usize <= sample;
    let rows: Vec<(String, i64, i64)> = c
        .prepare_cached("SELECT sha256, size, touched_at FROM artifacts WHERE sha256 > ?1 ORDER BY sha256 LIMIT ?2")?
        .query_map(params![if all { "" } else { cursor }, sample as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // A window that reached the end starts over at the beginning next time.
    let next =
        if all || rows.len() < sample { String::new() } else { rows.last().map(|r| r.0.clone()).unwrap_or_default() };
    for (sha, size, touched_at) in &rows {
        report.artifacts_checked += 1;
        match std::fs::read(store.path_of(sha)) {
            // A put registers its row before it writes the file: a recent row may not have its
            // file yet (or its writer died; garbage collection takes the row after the grace).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *touched_at > touched_since => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => flag("artifact_missing", sha.clone()),
            Err(e) => flag("artifact_unreadable", format!("{sha}: {e}")),
            Ok(bytes) if ArtifactStore::sha_of(&bytes) != *sha => {
                flag("artifact_corrupt", format!("{sha}: content hashes to {}", ArtifactStore::sha_of(&bytes)))
            }
            Ok(bytes) if bytes.len() as i64 != *size => {
                flag("artifact_size", format!("{sha}: {} bytes, recorded {size}", bytes.len()))
            }
            Ok(_) => {}
        }
    }
    Ok((report, next))
}
