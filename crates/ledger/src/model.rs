//! Records as the ledger returns them (serialized as-is by the API).

use machina_core::{ErrCode, RunStatus, Step, StepOutcome, TaskSpec, TaskStatus};
use rusqlite::Row;
use serde::Serialize;
use serde_json::Value;

/// An intent: what an agent wants done.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IntentRecord {
    /// Id (UUIDv7, so ids sort by creation time).
    pub id: String,
    /// What should be achieved, in words.
    pub goal: String,
    /// Inputs the recipe's template reads.
    pub inputs: Value,
    /// Constraints, kept for the planner and auditors.
    pub constraints: Value,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

pub(crate) const INTENT_COLS: &str = "id, goal, inputs, constraints, created_at";

impl IntentRecord {
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            goal: r.get(1)?,
            inputs: json_col(r, 2)?,
            constraints: json_col(r, 3)?,
            created_at: r.get(4)?,
        })
    }
}

/// A run of an intent under a recipe.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// Id (UUIDv7).
    pub id: String,
    /// Its intent.
    pub intent_id: String,
    /// Recipe name.
    pub recipe: String,
    /// Fairness partition.
    pub queue_partition_key: String,
    /// Workload as requested.
    pub workload: Value,
    /// Tasks that may run at once.
    pub concurrency: u32,
    /// State.
    pub status: RunStatus,
    /// Last step recorded (where a failure happened, for retries).
    pub last_step: Option<Step>,
    /// Operator retries so far.
    pub generation: u32,
    /// Error code of the failure, if failed.
    pub err_code: Option<String>,
    /// Human message of the failure.
    pub error_message: Option<String>,
    /// What should happen next: APPROVE, RETRY, REPAIR, or nothing.
    pub next_action: Option<String>,
    /// sha256 of the compiled plan artifact.
    pub plan_sha256: Option<String>,
    /// sha256 of the plan the approver approved.
    pub approved_plan_sha256: Option<String>,
    /// Who approved.
    pub approved_by: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
}

pub(crate) const RUN_COLS: &str = "id, intent_id, recipe, partition_key, workload, concurrency, status, \
    last_step, generation, err_code, error_message, next_action, plan_sha256, approved_plan_sha256, \
    approved_by, created_at, updated_at";

impl RunRecord {
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            intent_id: r.get(1)?,
            recipe: r.get(2)?,
            queue_partition_key: r.get(3)?,
            workload: json_col(r, 4)?,
            concurrency: r.get(5)?,
            status: parse_col(r, 6)?,
            last_step: r.get::<_, Option<String>>(7)?.map(|s| parse_str(&s, 7)).transpose()?,
            generation: r.get(8)?,
            err_code: r.get(9)?,
            error_message: r.get(10)?,
            next_action: r.get(11)?,
            plan_sha256: r.get(12)?,
            approved_plan_sha256: r.get(13)?,
            approved_by: r.get(14)?,
            created_at: r.get(15)?,
            updated_at: r.get(16)?,
        })
    }
}

/// One row of a run's append-only step history.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepRecord {
    /// Step.
    pub step: Step,
    /// started / succeeded / failed.
    pub outcome: StepOutcome,
    /// Run generation (operator retries) it belongs to.
    pub generation: u32,
    /// Error code when failed.
    pub err_code: Option<String>,
    /// Detail (plan hash, approver, message).
    pub detail: Option<String>,
    /// When.
    pub at: i64,
}

/// A task of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    /// sha256 of (intent, run, step, spec): its identity for exactly-once.
    pub task_key: String,
    /// Position in the plan.
    pub index: u32,
    /// The spec.
    pub spec: TaskSpec,
    /// State.
    pub status: TaskStatus,
    /// Attempts started so far (the fencing token of the current lease).
    pub attempt: u32,
    /// Who holds the lease.
    pub lease_owner: Option<String>,
    /// Last error code.
    pub err_code: Option<String>,
    /// Exit status of the last attempt.
    pub exit_status: Option<i32>,
    /// stdout artifact.
    pub stdout_sha256: Option<String>,
    /// stderr artifact.
    pub stderr_sha256: Option<String>,
    /// Not claimed before this time (backoff).
    pub not_before: i64,
    /// Last change.
    pub updated_at: i64,
}

pub(crate) const TASK_COLS: &str = "lower(hex(task_key)), idx, spec, status, attempt, lease_owner, err_code, \
    exit_status, stdout_sha256, stderr_sha256, not_before, updated_at";

impl TaskRecord {
    pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            task_key: r.get(0)?,
            index: r.get(1)?,
            spec: serde_json::from_str(&r.get::<_, String>(2)?).map_err(|e| conv_err(2, e))?,
            status: parse_col(r, 3)?,
            attempt: r.get(4)?,
            lease_owner: r.get(5)?,
            err_code: r.get(6)?,
            exit_status: r.get(7)?,
            stdout_sha256: r.get(8)?,
            stderr_sha256: r.get(9)?,
            not_before: r.get(10)?,
            updated_at: r.get(11)?,
        })
    }
}

/// One attempt of a task.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// Task.
    pub task_key: String,
    /// Attempt number.
    pub attempt: u32,
    /// Worker that ran it.
    pub owner: String,
    /// succeeded / failed.
    pub outcome: String,
    /// Error code when failed.
    pub err_code: Option<String>,
    /// Exit status.
    pub exit_status: Option<i32>,
    /// Wall time.
    pub wall_ms: i64,
}

/// A run with its history and tasks.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunRecord,
    /// Its steps, oldest first.
    pub steps: Vec<StepRecord>,
    /// Its tasks, in plan order.
    pub tasks: Vec<TaskRecord>,
}

/// An entry of a run's event log.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Per-run sequence, from 1, without gaps.
    pub seq: i64,
    /// Kind (run_created, state_changed, step, tasks_queued, task_claimed, task_finished, approval_required).
    pub kind: String,
    /// Details.
    pub data: Value,
    /// When.
    pub at: i64,
}

/// A task handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// Row id.
    pub task_id: i64,
    /// Task key (passed to tools so side effects can be deduplicated).
    pub task_key: String,
    /// Run.
    pub run_id: String,
    /// Attempt number: the fencing token to present on heartbeat and completion.
    pub attempt: u32,
    /// What to run.
    pub spec: TaskSpec,
    /// Lease expiry.
    pub lease_expires_at: i64,
    /// Its staged sequence if its creation was not known to be on disk when claimed
    /// (the ledger then syncs before handing it out; see publication.rs).
    pub(crate) unpublished: Option<i64>,
}

/// A run handed to a worker for CompileST.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileJob {
    /// The run.
    pub run: RunRecord,
    /// Its intent.
    pub intent: IntentRecord,
    /// Fencing token for [`finish_compile`](crate::Ledger::finish_compile).
    pub compile_attempt: u32,
    /// Active runs of the same partition, when this run's arbitration is still to be decided
    /// (see [`arbitrate`](crate::Ledger::arbitrate)); empty otherwise.
    pub rivals: Vec<RunRecord>,
}

/// How a task attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    /// Row id from the claim.
    pub task_id: i64,
    /// Worker id (lease owner).
    pub owner: String,
    /// Fencing token from the claim.
    pub attempt: u32,
    /// None when it succeeded.
    pub err_code: Option<ErrCode>,
    /// Exit status, when the process exited.
    pub exit_status: Option<i32>,
    /// stdout artifact.
    pub stdout_sha256: Option<String>,
    /// stderr artifact.
    pub stderr_sha256: Option<String>,
    /// Wall time of the attempt.
    pub wall_ms: i64,
}

/// Whether a worker may keep running a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease was extended.
    Renewed,
    /// The run is no longer executing (canceled, or failed because another task failed): stop the task.
    Canceled,
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The task's new status.
    pub task_status: TaskStatus,
    /// The run's status afterwards.
    pub run_status: RunStatus,
}

/// Counts for /metrics and /health.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Runs by status.
    pub runs: Vec<(String, i64)>,
    /// Tasks by status.
    pub tasks: Vec<(String, i64)>,
    /// Attempts by outcome and error code ("" when none).
    pub attempts: Vec<(String, String, i64)>,
    /// Events recorded.
    pub events: i64,
    /// Artifacts and their total bytes.
    pub artifacts: (i64, i64),
    /// Live dedup entries.
    pub dedup_entries: i64,
    /// Receipts seen more than once (must be 0).
    pub duplicate_receipts: i64,
}

fn conv_err(idx: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
}

pub(crate) fn json_col(r: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    serde_json::from_str(&r.get::<_, String>(idx)?).map_err(|e| conv_err(idx, e))
}

fn parse_str<T: std::str::FromStr<Err = String>>(s: &str, idx: usize) -> rusqlite::Result<T> {
    s.parse::<T>().map_err(|e| conv_err(idx, std::io::Error::other(e)))
}

pub(crate) fn parse_col<T: std::str::FromStr<Err = String>>(r: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    parse_str(&r.get::<_, String>(idx)?, idx)
}
