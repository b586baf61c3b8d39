//! Intents, runs, their steps and events: the run state machine, inside write transactions.

use machina_core::{ErrCode, Plan, RunStatus, Step, StepOutcome, TaskSpec};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::error::{LedgerError, Result};
use crate::model::{INTENT_COLS, IntentRecord, RUN_COLS, RunRecord};
use crate::task_rows::{self, TaskRow};

/// A new intent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntent {
    /// Goal in words.
    pub goal: String,
    /// Inputs (a JSON object).
    pub inputs: Value,
    /// Constraints (a JSON object).
    pub constraints: Value,
}

/// A new run of an existing intent. The caller has checked the workload against the recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Intent id.
    pub intent_id: String,
    /// Recipe name.
    pub recipe: String,
    /// Fairness partition.
    pub partition_key: String,
    /// Workload as requested (stored verbatim).
    pub workload: Value,
    /// Tasks that may run at once.
    pub concurrency: u32,
}

/// A plan ready to store: its canonical bytes are already an artifact.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPlan {
    /// The plan.
    pub plan: Plan,
    /// sha256 of `plan.canonical_bytes()`.
    pub plan_sha256: String,
    /// Whether it must wait at the approval gate.
    pub approval_required: bool,
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Append an event to the run's log under its next sequence number.
pub(crate) fn event(c: &Connection, run_id: &str, kind: &str, data: Value, now: i64) -> Result<()> {
    // Plain statements rather than RETURNING, which builds an ephemeral table per call.
    c.prepare_cached("UPDATE runs SET event_seq = event_seq + 1 WHERE id = ?1")?.execute([run_id])?;
    event_seq_taken(c, run_id, kind, data, now)
}

/// Append an event whose sequence number the caller already took (`event_seq + 1` in its
/// own UPDATE of the run, saving a statement on the hot path).
pub(crate) fn event_seq_taken(c: &Connection, run_id: &str, kind: &str, data: Value, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO events(run_id, seq, kind, data, at)
         VALUES (?1, (SELECT event_seq FROM runs WHERE id = ?1), ?2, ?3, ?4)",
    )?
    .execute(params![run_id, kind, data.to_string(), now])?;
    Ok(())
}

/// Append an event under a sequence number the caller knows (it set `event_seq` itself).
fn event_at(c: &Connection, run_id: &str, seq: i64, kind: &str, data: Value, now: i64) -> Result<()> {
    c.prepare_cached("INSERT INTO events(run_id, seq, kind, data, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![run_id, seq, kind, data.to_string(), now])?;
    Ok(())
}

pub(crate) struct StepRow<'a> {
    pub step: Step,
    pub outcome: StepOutcome,
    pub err_code: Option<&'a str>,
    pub detail: Option<String>,
}

pub(crate) fn record_step(c: &Connection, run: &RunRecord, s: StepRow<'_>, now: i64) -> Result<()> {
    insert_step(c, run, &s, now)?;
    c.prepare_cached("UPDATE runs SET last_step = ?2, updated_at = ?3 WHERE id = ?1")?.execute(params![
        run.id,
        s.step.as_str(),
        now
    ])?;
    event(c, &run.id, "step", step_data(&s), now)
}

/// The append-only `run_steps` row of a step (the run's `last_step` is the caller's).
fn insert_step(c: &Connection, run: &RunRecord, s: &StepRow<'_>, now: i64) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO run_steps(run_id, step, outcome, generation, err_code, detail, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![run.id, s.step.as_str(), s.outcome.as_str(), run.generation, s.err_code, s.detail, now])?;
    Ok(())
}

/// The `step` event's data.
fn step_data(s: &StepRow<'_>) -> Value {
    json!({"step": s.step, "outcome": s.outcome, "errCode": s.err_code, "detail": s.detail})
}

/// Refuse a move the state machine does not allow.
fn check_transition(run: &RunRecord, to: RunStatus) -> Result<()> {
    if run.status.can_become(to) {
        return Ok(());
    }
    Err(LedgerError::IllegalState(format!("run {} cannot go from {} to {to}", run.id, run.status)))
}

fn changed_concurrently(run_id: &str) -> LedgerError {
    LedgerError::Conflict(format!("run {run_id} changed state concurrently"))
}

/// Move `run` to `to`, checking the state machine and that nobody moved it meanwhile.
pub(crate) fn transition(c: &Connection, run: &mut RunRecord, to: RunStatus, now: i64) -> Result<()> {
    check_transition(run, to)?;
    let n = c
        .prepare_cached("UPDATE runs SET status = ?3, updated_at = ?4 WHERE id = ?1 AND status = ?2")?
        .execute(params![run.id, run.status.as_str(), to.as_str(), now])?;
    if n != 1 {
        return Err(changed_concurrently(&run.id));
    }
    event(c, &run.id, "state_changed", json!({"from": run.status, "to": to}), now)?;
    run.status = to;
    Ok(())
}

pub(crate) fn set_outcome(c: &Connection, run_id: &str, err: Option<(&str, &str)>, next: Option<&str>) -> Result<()> {
    c.prepare_cached("UPDATE runs SET err_code = ?2, error_message = ?3, next_action = ?4 WHERE id = ?1")?
        .execute(params![run_id, err.map(|e| e.0), err.map(|e| e.1), next])?;
    Ok(())
}

pub(crate) fn load_run(c: &Connection, id: &str) -> Result<RunRecord> {
    c.prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))?
        .query_row([id], RunRecord::from_row)
        .optional()?
        .ok_or_else(|| LedgerError::not_found("run", id))
}

pub(crate) fn load_intent(c: &Connection, id: &str) -> Result<IntentRecord> {
    c.prepare_cached(&format!("SELECT {INTENT_COLS} FROM intents WHERE id = ?1"))?
        .query_row([id], IntentRecord::from_row)
        .optional()?
        .ok_or_else(|| LedgerError::not_found("intent", id))
}

pub(crate) fn create_intent(c: &Connection, i: NewIntent, now: i64) -> Result<IntentRecord> {
    let id = new_id();
    c.prepare_cached("INSERT INTO intents(id, goal, inputs, constraints, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![id, i.goal, i.inputs.to_string(), i.constraints.to_string(), now])?;
    // What was just written, without reading it back (the submission's hot path).
    Ok(IntentRecord { id, goal: i.goal, inputs: i.inputs, constraints: i.constraints, created_at: now })
}

/// Create a queued run of an intent (`intent_known`: created in this same transaction).
pub(crate) fn start_run(c: &Connection, r: NewRun, intent_known: bool, now: i64) -> Result<RunRecord> {
    if !intent_known
        && c.prepare_cached("SELECT 1 FROM intents WHERE id = ?1")?
            .query_row([&r.intent_id], |_| Ok(()))
            .optional()?
            .is_none()
    {
        return Err(LedgerError::not_found("intent", &r.intent_id));
    }
    let id = new_id();
    c.prepare_cached("INSERT OR IGNORE INTO partitions(key) VALUES (?1)")?.execute([&r.partition_key])?;
    // A new run's first event is number 1: set here rather than by event()'s extra UPDATE.
    // Its number (what its tasks refer to it by) is the next one: this transaction holds
    // the write lock, and runs_num is unique.
    c.prepare_cached(
        "INSERT INTO runs(id, intent_id, recipe, partition_key, workload, concurrency, status, created_at, updated_at,
                          event_seq, num)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, 1, (SELECT COALESCE(MAX(num), 0) + 1 FROM runs))",
    )?
    .execute(params![id, r.intent_id, r.recipe, r.partition_key, r.workload.to_string(), r.concurrency, now])?;
    event_at(c, &id, 1, "run_created", json!({"recipe": r.recipe, "queuePartitionKey": r.partition_key}), now)?;
    Ok(RunRecord {
        id,
        intent_id: r.intent_id,
        recipe: r.recipe,
        queue_partition_key: r.partition_key,
        workload: r.workload,
        concurrency: r.concurrency,
        status: RunStatus::Queued,
        last_step: None,
        generation: 0,
        err_code: None,
        error_message: None,
        next_action: None,
        plan_sha256: None,
        approved_plan_sha256: None,
        approved_by: None,
        created_at: now,
        updated_at: now,
    })
}

/// Claim the oldest queued run of an unpaused partition for CompileST.
pub(crate) fn claim_compile(
    c: &Connection,
    owner: &str,
    lease_ms: i64,
    now: i64,
) -> Result<Option<crate::model::CompileJob>> {
    let id: Option<String> = c
        .prepare_cached(&format!(
            "SELECT r.id FROM runs r JOIN partitions p ON p.key = r.partition_key
             WHERE r.status = 'queued' AND p.paused = 0 AND {} ORDER BY r.id LIMIT 1",
            crate::arbitration::NOT_DEFERRED
        ))?
        .query_row([], |r| r.get(0))
        .optional()?;
    let Some(id) = id else { return Ok(None) };
    let mut run = load_run(c, &id)?;
    check_transition(&run, RunStatus::Compiling)?;
    // One UPDATE for what transition(), the lease and record_step() would write in four
    // (this is the path from a submission to its start): the state, the lease, the step, and
    // the two event numbers the two events below take.
    let (attempt, seq): (u32, i64) = c
        .prepare_cached(
            "UPDATE runs SET status = 'compiling', updated_at = ?4, lease_owner = ?2, lease_expires_at = ?3,
                 compile_attempt = compile_attempt + 1, last_step = ?5, event_seq = event_seq + 2
             WHERE id = ?1 AND status = 'queued'",
        )?
        .execute(params![id, owner, now + lease_ms, now, Step::Compile.as_str()])
        .map_err(LedgerError::from)
        .and_then(|n| match n {
            1 => Ok(c
                .prepare_cached("SELECT compile_attempt, event_seq FROM runs WHERE id = ?1")?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))?),
            _ => Err(changed_concurrently(&id)),
        })?;
    event_at(c, &id, seq - 1, "state_changed", json!({"from": run.status, "to": RunStatus::Compiling}), now)?;
    run.status = RunStatus::Compiling;
    let step = StepRow {
        step: Step::Compile,
        outcome: StepOutcome::Started,
        err_code: None,
        detail: Some(format!("by {owner}")),
    };
    insert_step(c, &run, &step, now)?;
    event_at(c, &id, seq, "step", step_data(&step), now)?;
    let intent = load_intent(c, &run.intent_id)?;
    let rivals = crate::arbitration::rivals(c, &run)?;
    Ok(Some(crate::model::CompileJob { run, intent, compile_attempt: attempt, rivals }))
}

/// Record the outcome of CompileST (fenced by owner and compile attempt).
pub(crate) fn finish_compile(
    c: &Connection,
    run_id: &str,
    owner: &str,
    compile_attempt: u32,
    outcome: std::result::Result<CompiledPlan, (ErrCode, String)>,
    policy: &machina_core::RetryPolicy,
    now: i64,
) -> Result<RunRecord> {
    let fenced: Option<(String, Option<String>, u32, u32)> = c
        .prepare_cached("SELECT status, lease_owner, compile_attempt, compile_budget_base FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((status, lease_owner, attempt, budget_base)) = fenced else {
        return Err(LedgerError::not_found("run", run_id));
    };
    if status != "compiling" || lease_owner.as_deref() != Some(owner) || attempt != compile_attempt {
        return Err(LedgerError::StaleLease(format!(
            "run {run_id} compile attempt {compile_attempt} is no longer held by {owner}"
        )));
    }
    c.prepare_cached("UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1")?.execute([run_id])?;
    let mut run = load_run(c, run_id)?;
    match outcome {
        Ok(compiled) => store_plan(c, &mut run, compiled, now)?,
        Err((code, message)) => {
            fail_compile(c, &mut run, code, &message, compile_attempt.saturating_sub(budget_base), policy, now)?
        }
    }
    load_run(c, run_id)
}

/// CompileST failed after `attempts_used` tries this generation: requeue, fail, or give up.
fn fail_compile(
    c: &Connection,
    run: &mut RunRecord,
    code: ErrCode,
    message: &str,
    attempts_used: u32,
    policy: &machina_core::RetryPolicy,
    now: i64,
) -> Result<()> {
    use machina_core::retry::RetryDecision;
    let row = StepRow {
        step: Step::Compile,
        outcome: StepOutcome::Failed,
        err_code: Some(code.as_str()),
        detail: Some(message.to_string()),
    };
    record_step(c, run, row, now)?;
    let (to, next) = match policy.decide(code, attempts_used, 0.0) {
        // Compiles are requeued at once: the backoff applies to tasks only.
        RetryDecision::Retry { .. } => (RunStatus::Queued, None),
        RetryDecision::Terminal => (RunStatus::Failed, Some("RETRY")),
        RetryDecision::Exhausted => (RunStatus::RetriesExceeded, Some("REPAIR")),
    };
    transition(c, run, to, now)?;
    let err = (to != RunStatus::Queued).then_some((code.as_str(), message));
    set_outcome(c, &run.id, err, next)
}

fn store_plan(c: &Connection, run: &mut RunRecord, compiled: CompiledPlan, now: i64) -> Result<()> {
    let bytes = compiled.plan.canonical_bytes();
    if machina_core::plan::sha256_hex(&bytes) != compiled.plan_sha256 {
        return Err(LedgerError::Integrity(format!(
            "plan of run {} does not hash to {}",
            run.id, compiled.plan_sha256
        )));
    }
    crate::tasks::register_artifact(c, &compiled.plan_sha256, bytes.len() as i64, "application/json", now)?;
    c.prepare_cached("UPDATE runs SET plan_json = ?2, plan_sha256 = ?3 WHERE id = ?1")?.execute(params![
        run.id,
        String::from_utf8_lossy(&bytes),
        compiled.plan_sha256
    ])?;
    run.plan_sha256 = Some(compiled.plan_sha256.clone());
    let detail = Some(format!("plan {} ({} tasks)", compiled.plan_sha256, compiled.plan.tasks.len()));
    record_step(c, run, StepRow { step: Step::Compile, outcome: StepOutcome::Succeeded, err_code: None, detail }, now)?;
    record_step(
        c,
        run,
        StepRow { step: Step::Decide, outcome: StepOutcome::Started, err_code: None, detail: None },
        now,
    )?;
    if compiled.approval_required {
        transition(c, run, RunStatus::WaitingInput, now)?;
        set_outcome(c, &run.id, None, Some("APPROVE"))?;
        event(c, &run.id, "approval_required", json!({"planSha256": compiled.plan_sha256}), now)?;
        Ok(())
    } else {
        let approver = format!("recipe:{}", run.recipe);
        approve_and_fan_out(c, run, &approver, &compiled.plan, now)
    }
}

/// ApprovePlan: only from waiting_input, bound to the plan's sha256.
pub(crate) fn approve(
    c: &Connection,
    run_id: &str,
    approver: &str,
    expected_sha: Option<&str>,
    now: i64,
) -> Result<RunRecord> {
    let mut run = load_run(c, run_id)?;
    if run.status != RunStatus::WaitingInput {
        return Err(LedgerError::IllegalState(format!(
            "run {run_id} is {}, not waiting_input: only a plan waiting at the approval gate can be approved",
            run.status
        )));
    }
    let (plan_json, sha): (String, String) = c
        .prepare_cached("SELECT plan_json, plan_sha256 FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if let Some(expected) = expected_sha.filter(|e| *e != sha) {
        return Err(LedgerError::Conflict(format!(
            "run {run_id}'s plan is {sha}, not {expected}: review the current plan"
        )));
    }
    if machina_core::plan::sha256_hex(plan_json.as_bytes()) != sha {
        return Err(LedgerError::Integrity(format!("stored plan of run {run_id} does not hash to {sha}")));
    }
    let plan: Plan = serde_json::from_str(&plan_json)?;
    approve_and_fan_out(c, &mut run, approver, &plan, now)?;
    load_run(c, run_id)
}

fn approve_and_fan_out(c: &Connection, run: &mut RunRecord, approver: &str, plan: &Plan, now: i64) -> Result<()> {
    c.prepare_cached(
        "UPDATE runs SET approved_by = ?2, approved_plan_sha256 = plan_sha256, approved_at = ?3, next_action = NULL WHERE id = ?1",
    )?
    .execute(params![run.id, approver, now])?;
    let detail = Some(format!("approved by {approver}"));
    record_step(c, run, StepRow { step: Step::Decide, outcome: StepOutcome::Succeeded, err_code: None, detail }, now)?;
    insert_tasks(c, &run_keys(c, &run.id)?, plan.tasks.iter().map(|t| (t, None)), now)?;
    transition(c, run, RunStatus::Executing, now)?;
    record_step(
        c,
        run,
        StepRow { step: Step::Execute, outcome: StepOutcome::Started, err_code: None, detail: None },
        now,
    )?;
    event(c, &run.id, "tasks_queued", json!({"count": plan.tasks.len()}), now)?;
    Ok(())
}

/// Insert `tasks` as queued tasks after the run's existing ones, keeping its counters;
/// returns how many. A task comes with its row when its client encoded it for this run.
fn insert_tasks<'a>(
    c: &Connection,
    run: &RunKeys,
    tasks: impl IntoIterator<Item = (&'a TaskSpec, Option<&'a TaskRow>)>,
    now: i64,
) -> Result<i64> {
    // Claimable once published (publication.rs): only Ack::Published jobs insert tasks.
    // The staged sequence is read once, not by a subquery per row.
    let staged: i64 =
        c.prepare_cached("SELECT staged_seq FROM publication WHERE id = 1")?.query_row([], |r| r.get(0))?;
    let tasks: Vec<(&TaskSpec, Option<&TaskRow>)> = tasks.into_iter().collect();
    // Rows the client did not encode (or encoded for another intent) are encoded here.
    let own: Vec<Option<TaskRow>> = tasks
        .iter()
        .map(|(spec, row)| row.is_none().then(|| TaskRow::encode(&run.intent_id, &run.id, spec)).transpose())
        .collect::<Result<_>>()?;
    let rows: Vec<task_rows::NewTask<'_>> = tasks
        .iter()
        .zip(&own)
        .map(|((spec, row), own)| (spec.name.as_str(), row.or(own.as_ref()).expect("encoded above when missing")))
        .collect();
    let target = task_rows::Target {
        run_num: run.num,
        partition_key: &run.partition_key,
        first_idx: run.task_count,
        now,
        staged,
    };
    task_rows::insert(c, &target, &rows)?;
    let n = rows.len() as i64;
    c.prepare_cached(
        "UPDATE runs SET task_count = task_count + ?2, queued_tasks = queued_tasks + ?2,
         pending_tasks = pending_tasks + ?2 WHERE id = ?1",
    )?
    .execute(params![run.id, n])?;
    Ok(n)
}

/// What adding tasks needs to know of a run (read without decoding the whole record).
pub(crate) struct RunKeys {
    id: String,
    num: i64,
    intent_id: String,
    partition_key: String,
    status: RunStatus,
    task_count: i64,
}

fn run_keys(c: &Connection, run_id: &str) -> Result<RunKeys> {
    c.prepare_cached("SELECT intent_id, partition_key, status, task_count, num FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| {
            Ok(RunKeys {
                id: run_id.to_string(),
                num: r.get(4)?,
                intent_id: r.get(0)?,
                partition_key: r.get(1)?,
                status: crate::model::parse_col(r, 2)?,
                task_count: r.get(3)?,
            })
        })
        .optional()?
        .ok_or_else(|| LedgerError::not_found("run", run_id))
}

/// One client's tasks to append, with their rows if it encoded them for the run's intent.
pub(crate) struct Append<'a> {
    pub(crate) specs: &'a [TaskSpec],
    pub(crate) encoded: Option<&'a Encoded>,
}

impl<'a> Append<'a> {
    /// The client's rows, if it encoded them for `intent_id` (a stale guess is recomputed).
    fn rows(&self, intent_id: &str) -> Option<&'a [TaskRow]> {
        self.encoded.filter(|e| e.intent_id == intent_id && e.rows.len() == self.specs.len()).map(|e| e.rows.as_slice())
    }
}

/// A client's rows for its specs, computed assuming the run belongs to `intent_id`.
pub(crate) struct Encoded {
    pub(crate) intent_id: String,
    pub(crate) rows: Vec<TaskRow>,
}

/// What an append did: how many tasks each client added, and the run's intent when some
/// client's rows were missing or assumed another (so it can encode its next ones itself).
pub(crate) struct Appended {
    pub(crate) counts: Vec<usize>,
    pub(crate) intent_id: Option<String>,
}

/// Add the tasks of one or more appends to an executing run (in order, under one
/// `tasks_queued` event).
pub(crate) fn append_tasks(c: &Connection, run_id: &str, appends: &[Append<'_>], now: i64) -> Result<Appended> {
    let run = run_keys(c, run_id)?;
    if run.status != RunStatus::Executing {
        return Err(LedgerError::IllegalState(format!(
            "run {run_id} is {}: tasks can only be added to an executing run",
            run.status
        )));
    }
    let intent_id = appends.iter().any(|a| a.rows(&run.intent_id).is_none()).then(|| run.intent_id.clone());
    let tasks = appends.iter().flat_map(|a| {
        let rows = a.rows(&run.intent_id);
        a.specs.iter().enumerate().map(move |(i, spec)| (spec, rows.map(|r| &r[i])))
    });
    let added = insert_tasks(c, &run, tasks, now)?;
    event(c, run_id, "tasks_queued", json!({"count": added}), now)?;
    Ok(Appended { counts: appends.iter().map(|a| a.specs.len()).collect(), intent_id })
}

/// RetryRun: resume a failed run from its failed step, under the same id.
pub(crate) fn retry(c: &Connection, run_id: &str, now: i64) -> Result<RunRecord> {
    let mut run = load_run(c, run_id)?;
    match run.status {
        RunStatus::Succeeded => {
            return Err(LedgerError::RetryDrift(format!(
                "run {run_id} already succeeded: retrying would re-run committed work; submit a new run instead"
            )));
        }
        RunStatus::Failed | RunStatus::RetriesExceeded => {}
        other => {
            return Err(LedgerError::IllegalState(format!(
                "run {run_id} is {other}: only failed or retries_exceeded runs can be retried"
            )));
        }
    }
    c.prepare_cached(
        "UPDATE runs SET generation = generation + 1, compile_budget_base = compile_attempt WHERE id = ?1",
    )?
    .execute([run_id])?;
    run.generation += 1;
    set_outcome(c, run_id, None, None)?;
    if run.last_step == Some(Step::Execute) {
        let n = c
            .prepare_cached(
                "UPDATE tasks SET status = 'queued', budget_base = attempt, not_before = 0, updated_at = ?2,
                 pub_seq = (SELECT staged_seq FROM publication WHERE id = 1)
                 WHERE run_num = (SELECT num FROM runs WHERE id = ?1) AND status IN ('failed', 'canceled')",
            )?
            .execute(params![run_id, now])?;
        c.prepare_cached("UPDATE runs SET queued_tasks = queued_tasks + ?2 WHERE id = ?1")?
            .execute(params![run_id, n as i64])?;
        transition(c, &mut run, RunStatus::Executing, now)?;
        let detail = Some(format!("retry {}: {n} tasks requeued", run.generation));
        record_step(
            c,
            &run,
            StepRow { step: Step::Execute, outcome: StepOutcome::Started, err_code: None, detail },
            now,
        )?;
        event(c, run_id, "tasks_queued", json!({"count": n}), now)?;
    } else {
        transition(c, &mut run, RunStatus::Queued, now)?;
    }
    load_run(c, run_id)
}

/// CancelRun: stop a run that has not finished.
pub(crate) fn cancel(c: &Connection, run_id: &str, now: i64) -> Result<RunRecord> {
    let mut run = load_run(c, run_id)?;
    if run.status.is_terminal() {
        return Err(LedgerError::IllegalState(format!("run {run_id} is already {}; nothing to cancel", run.status)));
    }
    transition(c, &mut run, RunStatus::Canceled, now)?;
    cancel_queued_tasks(c, run_id, now)?;
    c.prepare_cached("UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, next_action = NULL WHERE id = ?1")?
        .execute([run_id])?;
    load_run(c, run_id)
}

/// Cancel a run's queued tasks (keeping its counters); returns how many.
pub(crate) fn cancel_queued_tasks(c: &Connection, run_id: &str, now: i64) -> Result<usize> {
    let n = c
        .prepare_cached(
            "UPDATE tasks SET status = 'canceled', updated_at = ?2
             WHERE run_num = (SELECT num FROM runs WHERE id = ?1) AND status = 'queued'",
        )?
        .execute(params![run_id, now])?;
    c.prepare_cached("UPDATE runs SET queued_tasks = queued_tasks - ?2 WHERE id = ?1")?
        .execute(params![run_id, n as i64])?;
    Ok(n)
}

/// CompileST of runs whose worker vanished failed with LEASE_LOST (retried per policy,
/// so a plan that crashes every worker ends as retries_exceeded, not in a loop).
pub(crate) fn reclaim_compiles(
    c: &Connection,
    owner: Option<&str>,
    policy: &machina_core::RetryPolicy,
    now: i64,
) -> Result<usize> {
    let stale: Vec<(String, u32, u32)> = c
        .prepare_cached(
            "SELECT id, compile_attempt, compile_budget_base FROM runs WHERE status = 'compiling'
             AND ((?1 IS NULL AND lease_expires_at < ?2) OR lease_owner = ?1)",
        )?
        .query_map(params![owner, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, attempt, base) in &stale {
        c.prepare_cached("UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL WHERE id = ?1")?.execute([id])?;
        let mut run = load_run(c, id)?;
        let msg = "the worker compiling this run stopped renewing its lease";
        fail_compile(c, &mut run, ErrCode::LeaseLost, msg, attempt.saturating_sub(*base), policy, now)?;
    }
    Ok(stale.len())
}
