//! Tasks: fair claiming under leases, heartbeats, fenced exactly-once completion, reclaim.

use machina_core::retry::RetryDecision;
use machina_core::{ErrCode, RetryPolicy, RunStatus, Step, StepOutcome, TaskStatus};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use crate::error::{LedgerError, Result};
use crate::model::{ClaimedTask, Completion, Heartbeat, TaskReport};
use crate::runs::{
    StepRow, cancel_queued_tasks, event, event_seq_taken, load_run, record_step, set_outcome, transition,
};

pub(crate) fn register_artifact(c: &Connection, sha: &str, size: i64, media_type: &str, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO artifacts(sha256, size, media_type, created_at, touched_at) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT(sha256) DO UPDATE SET touched_at = excluded.touched_at",
    )?
    .execute(params![sha, size, media_type, now])?;
    Ok(())
}

/// Claim one runnable task, fairly: the partition claimed least recently first,
/// then within it the run claimed least recently, then the task earliest in the plan.
/// A run never holds more leases than its concurrency.
pub(crate) fn claim(c: &Connection, owner: &str, lease_ms: i64, now: i64) -> Result<Option<ClaimedTask>> {
    // Candidate runs come from the runs' counters (few rows), not from scanning tasks.
    let runs: Vec<(String, i64, String)> = c
        .prepare_cached(
            "SELECT r.id, r.num, r.partition_key FROM runs r JOIN partitions p ON p.key = r.partition_key
             WHERE r.status = 'executing' AND p.paused = 0 AND r.queued_tasks > 0
               AND r.leased_tasks < r.concurrency
             ORDER BY p.last_claim_seq, p.key, r.last_claim_seq, r.id",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (run_id, run_num, pk) in runs {
        let task: Option<Queued> = c
            .prepare_cached(
                "SELECT id, lower(hex(task_key)), spec, attempt,
                        CASE WHEN pub_seq > (SELECT durable_seq FROM publication WHERE id = 1) THEN pub_seq END
                 FROM tasks WHERE run_num = ?1 AND status = 'queued' AND not_before <= ?2
                 ORDER BY idx LIMIT 1",
            )?
            .query_row(params![run_num, now], |r| {
                Ok(Queued {
                    id: r.get(0)?,
                    key: r.get(1)?,
                    spec: r.get(2)?,
                    attempt: r.get(3)?,
                    unpublished: r.get(4)?,
                })
            })
            .optional()?;
        if let Some(found) = task {
            return lease(c, owner, lease_ms, now, (&pk, &run_id), found).map(Some);
        }
        // Everything queued in this run is waiting out a backoff: try the next run.
    }
    Ok(None)
}

/// A queued task as the claim reads it.
struct Queued {
    id: i64,
    key: String,
    spec: String,
    attempt: u32,
    /// Its staged sequence, if nobody has published it yet.
    unpublished: Option<i64>,
}

fn lease(
    c: &Connection,
    owner: &str,
    lease_ms: i64,
    now: i64,
    (pk, run_id): (&str, &str),
    q: Queued,
) -> Result<ClaimedTask> {
    let Queued { id: task_id, key: task_key, spec, attempt: previous_attempt, unpublished } = q;
    let seq: i64 =
        c.prepare_cached("SELECT COALESCE(MAX(last_claim_seq), 0) + 1 FROM partitions")?.query_row([], |r| r.get(0))?;
    let expires = now + lease_ms;
    let attempt = previous_attempt + 1;
    c.prepare_cached(
        "UPDATE tasks SET status = 'leased', attempt = ?5, lease_owner = ?2,
         lease_expires_at = ?3, updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![task_id, owner, expires, now, attempt])?;
    // The counters and the sequence number of the task_claimed event below, in one update.
    c.prepare_cached(
        "UPDATE runs SET leased_tasks = leased_tasks + 1, queued_tasks = queued_tasks - 1, last_claim_seq = ?2,
         event_seq = event_seq + 1 WHERE id = ?1",
    )?
    .execute(params![run_id, seq])?;
    c.prepare_cached("UPDATE partitions SET last_claim_seq = ?2 WHERE key = ?1")?.execute(params![pk, seq])?;
    event_seq_taken(c, run_id, "task_claimed", json!({"taskKey": task_key, "attempt": attempt, "owner": owner}), now)?;
    Ok(ClaimedTask {
        task_id,
        task_key,
        run_id: run_id.to_string(),
        attempt,
        spec: serde_json::from_str(&spec)?,
        lease_expires_at: expires,
        unpublished,
    })
}

struct Held {
    task_key: String,
    run_id: String,
    budget_base: u32,
    run_status: RunStatus,
}

/// Check the caller still holds the lease (owner and attempt fence it).
fn fence(c: &Connection, task_id: i64, owner: &str, attempt: u32) -> Result<Held> {
    type Row = (String, String, Option<String>, u32, String, u32, String);
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT lower(hex(t.task_key)), t.status, t.lease_owner, t.attempt, r.id, t.budget_base, r.status
             FROM tasks t JOIN runs r ON r.num = t.run_num WHERE t.id = ?1",
        )?
        .query_row([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .optional()?;
    let Some((task_key, status, lease_owner, current, run_id, budget_base, run_status)) = row else {
        return Err(LedgerError::not_found("task", task_id.to_string()));
    };
    if status != "leased" || lease_owner.as_deref() != Some(owner) || current != attempt {
        return Err(LedgerError::StaleLease(format!(
            "task {task_key} attempt {attempt} is not leased to {owner} (status {status}, attempt {current}, owner {})",
            lease_owner.as_deref().unwrap_or("none")
        )));
    }
    let run_status = run_status.parse::<RunStatus>().map_err(LedgerError::Db)?;
    Ok(Held { task_key, run_id, budget_base, run_status })
}

pub(crate) fn heartbeat(
    c: &Connection,
    task_id: i64,
    owner: &str,
    attempt: u32,
    lease_ms: i64,
    now: i64,
) -> Result<Heartbeat> {
    let held = fence(c, task_id, owner, attempt)?;
    if held.run_status != RunStatus::Executing {
        // Canceled, or failed closed because another task failed: stop this one too.
        return Ok(Heartbeat::Canceled);
    }
    c.prepare_cached("UPDATE tasks SET lease_expires_at = ?2 WHERE id = ?1")?
        .execute(params![task_id, now + lease_ms])?;
    Ok(Heartbeat::Renewed)
}

/// Commit an attempt's outcome. Exactly once per task key: only the current
/// lease holder can commit, and a committed task is never leased again.
pub(crate) fn complete(
    c: &Connection,
    rep: &TaskReport,
    policy: &RetryPolicy,
    jitter: f64,
    now: i64,
) -> Result<Completion> {
    let held = fence(c, rep.task_id, &rep.owner, rep.attempt)?;
    let outcome = if rep.err_code.is_none() { "succeeded" } else { "failed" };
    let code = rep.err_code.map(|e| e.as_str());
    c.prepare_cached(
        "INSERT INTO attempts(task_id, task_key, attempt, owner, outcome, err_code, exit_status, wall_ms, ended_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        rep.task_id,
        held.task_key,
        rep.attempt,
        rep.owner,
        outcome,
        code,
        rep.exit_status,
        rep.wall_ms,
        now
    ])?;
    for sha in [&rep.stdout_sha256, &rep.stderr_sha256].into_iter().flatten() {
        // The worker registered the file; make sure the row exists before referencing it.
        let known: bool = c
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM artifacts WHERE sha256 = ?1)")?
            .query_row([sha], |r| r.get(0))?;
        if !known {
            return Err(LedgerError::Integrity(format!("artifact {sha} is not registered")));
        }
    }
    let status = held.run_status;
    let task_status = match rep.err_code {
        None => {
            c.prepare_cached(
                "INSERT INTO receipts(task_id, effect_key, seen, first_at, last_at) VALUES (?1, ?2, 1, ?3, ?3)
                 ON CONFLICT(task_id) DO UPDATE SET seen = seen + 1, last_at = excluded.last_at",
            )?
            .execute(params![rep.task_id, held.task_key, now])?;
            TaskStatus::Succeeded
        }
        // Stopped because its run was canceled (by an operator, or by arbitration).
        Some(ErrCode::Canceled) if status == RunStatus::Canceled => TaskStatus::Canceled,
        Some(_) if status != RunStatus::Executing => TaskStatus::Failed,
        // Killed because its run had stopped, and the run was retried meanwhile: the kill
        // says nothing about the task, so it goes back to the queue without spending a retry.
        Some(ErrCode::Canceled) => {
            c.prepare_cached("UPDATE tasks SET budget_base = budget_base + 1 WHERE id = ?1")?.execute([rep.task_id])?;
            TaskStatus::Queued
        }
        Some(code) => match policy.decide(code, rep.attempt.saturating_sub(held.budget_base), jitter) {
            RetryDecision::Retry { delay_ms } => {
                c.prepare_cached("UPDATE tasks SET not_before = ?2 WHERE id = ?1")?
                    .execute(params![rep.task_id, now + delay_ms as i64])?;
                TaskStatus::Queued
            }
            RetryDecision::Terminal => TaskStatus::Failed,
            RetryDecision::Exhausted => TaskStatus::Failed,
        },
    };
    let succeeded = i64::from(task_status == TaskStatus::Succeeded);
    let requeued = i64::from(task_status == TaskStatus::Queued);
    // The counters and the sequence number of the task_finished event below, in one update.
    c.prepare_cached(
        "UPDATE runs SET leased_tasks = leased_tasks - 1, pending_tasks = pending_tasks - ?2,
         queued_tasks = queued_tasks + ?3, event_seq = event_seq + 1 WHERE id = ?1",
    )?
    .execute(params![held.run_id, succeeded, requeued])?;
    let pending: i64 =
        c.prepare_cached("SELECT pending_tasks FROM runs WHERE id = ?1")?.query_row([&held.run_id], |r| r.get(0))?;
    c.prepare_cached(
        "UPDATE tasks SET status = ?2, lease_owner = NULL, lease_expires_at = NULL, err_code = ?3,
         exit_status = ?4, stdout_sha256 = ?5, stderr_sha256 = ?6, updated_at = ?7 WHERE id = ?1",
    )?
    .execute(params![
        rep.task_id,
        task_status.as_str(),
        code,
        rep.exit_status,
        rep.stdout_sha256,
        rep.stderr_sha256,
        now
    ])?;
    event_seq_taken(
        c,
        &held.run_id,
        "task_finished",
        json!({"taskKey": held.task_key, "attempt": rep.attempt, "status": task_status, "errCode": code, "exitStatus": rep.exit_status}),
        now,
    )?;
    let settles = status == RunStatus::Executing
        && match task_status {
            TaskStatus::Failed => true,
            TaskStatus::Succeeded => pending == 0,
            _ => false,
        };
    if !settles {
        return Ok(Completion { task_status, run_status: status });
    }
    let mut run = load_run(c, &held.run_id)?;
    settle_run(c, &mut run, rep, task_status, policy, held.budget_base, now)?;
    Ok(Completion { task_status, run_status: run.status })
}

/// After a task changed, decide whether its run is done.
fn settle_run(
    c: &Connection,
    run: &mut crate::model::RunRecord,
    rep: &TaskReport,
    task_status: TaskStatus,
    policy: &RetryPolicy,
    budget_base: u32,
    now: i64,
) -> Result<()> {
    match (task_status, rep.err_code) {
        (TaskStatus::Failed, Some(code)) => {
            let exhausted = policy.retry_on.contains(&code);
            let to = if exhausted { RunStatus::RetriesExceeded } else { RunStatus::Failed };
            let message = if exhausted {
                format!("task attempt {} failed with {code}; {} attempts used", rep.attempt, rep.attempt - budget_base)
            } else {
                format!("task attempt {} failed with {code}, which is not retried", rep.attempt)
            };
            cancel_queued_tasks(c, &run.id, now)?;
            let row = StepRow {
                step: Step::Execute,
                outcome: StepOutcome::Failed,
                err_code: Some(code.as_str()),
                detail: Some(message.clone()),
            };
            record_step(c, run, row, now)?;
            transition(c, run, to, now)?;
            set_outcome(c, &run.id, Some((code.as_str(), &message)), Some(if exhausted { "REPAIR" } else { "RETRY" }))?;
        }
        (TaskStatus::Succeeded, _) => {
            // Called only once pending_tasks reached zero: every task has succeeded.
            let row = StepRow { step: Step::Execute, outcome: StepOutcome::Succeeded, err_code: None, detail: None };
            record_step(c, run, row, now)?;
            transition(c, run, RunStatus::Succeeded, now)?;
            set_outcome(c, &run.id, None, None)?;
        }
        _ => {}
    }
    Ok(())
}

/// Hand a claimed but unstarted task back (worker shutting down). The attempt number
/// stays spent (it is a fencing token) but does not count against the retry budget.
pub(crate) fn release(c: &Connection, task_id: i64, owner: &str, attempt: u32, now: i64) -> Result<()> {
    let held = fence(c, task_id, owner, attempt)?;
    // A run that stopped meanwhile (canceled, failed) must not get the task back as runnable.
    let executing = held.run_status == RunStatus::Executing;
    let next = if executing { "queued" } else { "canceled" };
    c.prepare_cached(
        "UPDATE tasks SET status = ?3, lease_owner = NULL, lease_expires_at = NULL,
         budget_base = budget_base + 1, updated_at = ?2 WHERE id = ?1",
    )?
    .execute(params![task_id, now, next])?;
    c.prepare_cached(
        "UPDATE runs SET leased_tasks = leased_tasks - 1, queued_tasks = queued_tasks + ?2 WHERE id = ?1",
    )?
    .execute(params![held.run_id, i64::from(executing)])?;
    event(
        c,
        &held.run_id,
        "task_released",
        json!({"taskKey": held.task_key, "attempt": attempt, "owner": owner}),
        now,
    )?;
    Ok(())
}

/// Treat leases that expired (or, with `owner`, all of that owner's leases) as LEASE_LOST.
pub(crate) fn reclaim(
    c: &Connection,
    owner: Option<&str>,
    policy: &RetryPolicy,
    jitter: f64,
    now: i64,
) -> Result<usize> {
    let stale: Vec<(i64, String, u32, i64)> = c
        .prepare_cached(
            // Both branches read only the partial index of leased tasks.
            "SELECT id, lease_owner, attempt, updated_at FROM tasks WHERE status = 'leased'
             AND CASE WHEN ?1 IS NULL THEN lease_expires_at < ?2 ELSE lease_owner = ?1 END",
        )?
        .query_map(params![owner, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (task_id, lease_owner, attempt, leased_at) in &stale {
        let rep = TaskReport {
            task_id: *task_id,
            owner: lease_owner.clone(),
            attempt: *attempt,
            err_code: Some(ErrCode::LeaseLost),
            exit_status: None,
            stdout_sha256: None,
            stderr_sha256: None,
            wall_ms: now - leased_at,
        };
        complete(c, &rep, policy, jitter, now)?;
    }
    Ok(stale.len())
}
