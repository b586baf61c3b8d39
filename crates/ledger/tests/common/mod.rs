//! Shared helpers for the ledger's integration tests: temp ledgers on a
//! manual clock, submissions, compiling plans, and task reports.

#![allow(dead_code)]

use machina_core::plan::sha256_hex;
use machina_core::recipe::Workload;
use machina_core::{ErrCode, ManualClock, Plan, RecipeBook, TaskSpec};
use machina_ledger::{
    ClaimedTask, CompiledPlan, Ledger, LedgerError, LedgerOptions, NewIntent, NewRun, RunRecord, Submission,
    TaskRecord, TaskReport,
};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// Where every manual clock starts (an arbitrary instant in 2023).
pub const T0: i64 = 1_700_000_000_000;
/// Lease long enough never to expire unless a test moves the clock on purpose.
pub const LONG_LEASE: i64 = 600_000;

/// A ledger in its own temp dir, on a manual clock.
pub struct TestLedger {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub ledger: Ledger,
}

impl TestLedger {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(T0);
        let ledger = open_at(dir.path(), &clock);
        Self { dir, clock, ledger }
    }

    /// Drop this ledger handle and open the same directory again.
    pub fn reopen(self) -> Self {
        let Self { dir, clock, ledger } = self;
        drop(ledger);
        let ledger = open_at(dir.path(), &clock);
        Self { dir, clock, ledger }
    }
}

/// Options for `dir` with default durability and retry policy, on `clock`.
pub fn options(dir: &Path, clock: &ManualClock) -> LedgerOptions {
    let mut o = LedgerOptions::new(dir);
    o.clock = Arc::new(clock.clone());
    o
}

pub fn open_at(dir: &Path, clock: &ManualClock) -> Ledger {
    match Ledger::open(options(dir, clock)) {
        Ok(l) => l,
        Err(e) => panic!("cannot open ledger in {}: {e}", dir.display()),
    }
}

pub fn new_intent(inputs: Value) -> NewIntent {
    NewIntent { goal: "integration test".into(), inputs, constraints: json!({}) }
}

/// A run (intent id filled in by `Submission::Enqueue`).
pub fn new_run(partition: &str, recipe: &str, concurrency: u32) -> NewRun {
    let workload = Workload { concurrency, max_steps: None };
    NewRun {
        intent_id: String::new(),
        recipe: recipe.into(),
        partition_key: partition.into(),
        workload: serde_json::to_value(workload).expect("workload serializes"),
        concurrency,
    }
}

/// Submit an intent and its run; returns (intent id, run id).
pub async fn enqueue(l: &Ledger, partition: &str, recipe: &str, concurrency: u32, inputs: Value) -> (String, String) {
    let s = l
        .submit(None, Submission::Enqueue(new_intent(inputs), new_run(partition, recipe, concurrency)))
        .await
        .expect("submit");
    (body_id(&s.body["intent"]), body_id(&s.body["run"]))
}

pub fn body_id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

/// A plan of `n` shell tasks named t-0, t-1, ...
pub fn shell_plan(n: usize, concurrency: u32) -> Plan {
    Plan {
        recipe: "sandbox-default".into(),
        concurrency,
        tasks: (0..n)
            .map(|i| TaskSpec {
                name: format!("t-{i}"),
                tool: "shell".into(),
                argv: vec!["/usr/bin/true".into(), i.to_string()],
                timeout_secs: 5,
                lease: None,
            })
            .collect(),
    }
}

/// The built-in demo recipe's plan for `words`.
pub fn demo_plan(words: &[&str], concurrency: u32) -> Plan {
    let book = RecipeBook::builtin();
    let demo = book.get("demo").expect("demo recipe");
    demo.render(&json!({ "words": words }), &Workload { concurrency, max_steps: None }).expect("demo renders")
}

/// Store `plan` as an artifact and return the CompiledPlan bound to it.
pub async fn compiled(l: &Ledger, plan: Plan, approval_required: bool) -> CompiledPlan {
    let bytes = plan.canonical_bytes();
    let sha = l.put_artifact(bytes.clone(), "application/json").await.expect("put plan");
    assert_eq!(sha, sha256_hex(&bytes));
    CompiledPlan { plan, plan_sha256: sha, approval_required }
}

/// Claim the (only) queued run for compiling, check it is `run_id`, and store `plan`.
pub async fn compile(l: &Ledger, run_id: &str, plan: Plan, approval_required: bool) -> RunRecord {
    let job = l.claim_compile("compiler", LONG_LEASE).await.expect("claim_compile").expect("a queued run");
    assert_eq!(job.run.id, run_id, "claim_compile picked another run");
    let c = compiled(l, plan, approval_required).await;
    l.finish_compile(&job, "compiler", Ok(c)).await.expect("finish_compile")
}

/// Submit a run and fan out `plan` at once (no approval); returns (intent id, run id).
pub async fn executing_run(l: &Ledger, partition: &str, plan: Plan) -> (String, String) {
    let (intent, run) = enqueue(l, partition, "sandbox-default", plan.concurrency, json!({})).await;
    let rec = compile(l, &run, plan, false).await;
    assert_eq!(rec.status, machina_core::RunStatus::Executing);
    (intent, run)
}

pub fn ok_report(t: &ClaimedTask, owner: &str) -> TaskReport {
    TaskReport {
        task_id: t.task_id,
        owner: owner.into(),
        attempt: t.attempt,
        err_code: None,
        exit_status: Some(0),
        stdout_sha256: None,
        stderr_sha256: None,
        wall_ms: 1,
    }
}

pub fn fail_report(t: &ClaimedTask, owner: &str, code: ErrCode) -> TaskReport {
    TaskReport { err_code: Some(code), exit_status: (code == ErrCode::CmdNonzero).then_some(1), ..ok_report(t, owner) }
}

/// Claim one task, which must exist.
pub async fn claim(l: &Ledger, owner: &str) -> ClaimedTask {
    l.claim_task(owner, LONG_LEASE).await.expect("claim_task").expect("a claimable task")
}

/// The task of `run_id` with plan index `idx`.
pub async fn task(l: &Ledger, run_id: &str, idx: u32) -> TaskRecord {
    let d = l.run_detail(run_id).await.expect("run_detail");
    d.tasks.into_iter().find(|t| t.index == idx).unwrap_or_else(|| panic!("run {run_id} has no task {idx}"))
}

pub async fn count(l: &Ledger, sql: &str) -> i64 {
    l.query_i64(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn assert_stale(r: Result<impl std::fmt::Debug, LedgerError>) {
    match r {
        Err(LedgerError::StaleLease(_)) => {}
        other => panic!("expected StaleLease, got {other:?}"),
    }
}

/// A direct rusqlite connection to the ledger file (for oracles and tampering).
pub fn raw(l: &Ledger) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(l.path()).expect("open ledger file");
    c.busy_timeout(std::time::Duration::from_secs(5)).expect("busy timeout");
    c
}
