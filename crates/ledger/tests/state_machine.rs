//! The run state machine at the ledger level: a demo run from submission
//! through CompileST, the approval gate (bound to the plan's sha256) and
//! ExecuteST to success; the append-only step history and gapless events;
//! illegal transitions and unknown ids with their error kinds; and compile
//! failures with their retry budget.

mod common;

use common::*;
use machina_core::plan::sha256_hex;
use machina_core::{ErrCode, RecipeBook, RunStatus, Step, StepOutcome, TaskStatus, task_key};
use machina_ledger::{LedgerError, NewRun, Submission};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_run_goes_from_submission_to_success() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let s = l
        .submit(None, Submission::Enqueue(new_intent(json!({"words": ["alpha", "beta"]})), new_run("p", "demo", 2)))
        .await
        .unwrap();
    assert_eq!(s.status, 202);
    assert!(!s.replayed);
    assert_eq!(s.body["run"]["status"], "queued");
    let (intent_id, run_id) = (body_id(&s.body["intent"]), body_id(&s.body["run"]));
    assert_eq!(s.body["run"]["intentId"], intent_id.as_str());

    // CompileST
    let job = l.claim_compile("compiler-1", LONG_LEASE).await.unwrap().expect("queued run");
    assert_eq!(
        (job.run.id.as_str(), job.intent.id.as_str(), job.compile_attempt),
        (run_id.as_str(), intent_id.as_str(), 1)
    );
    assert_eq!(l.run_detail(&run_id).await.unwrap().run.status, RunStatus::Compiling);
    assert!(l.claim_compile("compiler-2", LONG_LEASE).await.unwrap().is_none(), "a compiling run is not claimed twice");

    let book = RecipeBook::builtin();
    let recipe = book.get("demo").unwrap();
    let workload = serde_json::from_value(job.run.workload.clone()).unwrap();
    let plan = recipe.render(&job.intent.inputs, &workload).unwrap();
    assert_eq!(plan.tasks.len(), 3);
    let bytes = plan.canonical_bytes();
    let sha = sha256_hex(&bytes);
    assert_eq!(l.put_artifact(bytes.clone(), "application/json").await.unwrap(), sha);
    let compiled = machina_ledger::CompiledPlan {
        plan: plan.clone(),
        plan_sha256: sha.clone(),
        approval_required: recipe.approval_required,
    };
    assert_stale(l.finish_compile(&job, "compiler-2", Ok(compiled.clone())).await);
    let run = l.finish_compile(&job, "compiler-1", Ok(compiled)).await.unwrap();

    // DecideST: the approval gate
    assert_eq!(run.status, RunStatus::WaitingInput);
    assert_eq!(run.next_action.as_deref(), Some("APPROVE"));
    assert_eq!(run.plan_sha256.as_deref(), Some(sha.as_str()));
    assert!(l.run_detail(&run_id).await.unwrap().tasks.is_empty(), "no tasks before approval");
    assert_eq!(l.get_artifact(&sha).await.unwrap(), bytes);
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none());

    let wrong = sha256_hex(b"some other plan");
    match l.approve_plan(&run_id, "alice", Some(wrong)).await {
        Err(e @ LedgerError::Conflict(_)) => assert_eq!(e.kind().as_str(), "conflict"),
        other => panic!("approving the wrong sha: {other:?}"),
    }
    assert_eq!(l.run_detail(&run_id).await.unwrap().run.status, RunStatus::WaitingInput);
    let run = l.approve_plan(&run_id, "alice", Some(sha.clone())).await.unwrap();
    assert_eq!(run.status, RunStatus::Executing);
    assert_eq!(run.approved_by.as_deref(), Some("alice"));
    assert_eq!(run.approved_plan_sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(run.next_action, None);

    // ExecuteST: tasks keyed by (intent, run, step, spec)
    let detail = l.run_detail(&run_id).await.unwrap();
    assert_eq!(detail.tasks.len(), 3);
    for (i, task) in detail.tasks.iter().enumerate() {
        assert_eq!(task.index as usize, i);
        assert_eq!(task.spec, plan.tasks[i]);
        assert_eq!(task.task_key, task_key(&intent_id, &run_id, Step::Execute, &plan.tasks[i]));
        assert_eq!((task.status, task.attempt), (TaskStatus::Queued, 0));
    }
    let mut done = Vec::new();
    let mut last = None;
    while let Some(c) = l.claim_task("w1", LONG_LEASE).await.unwrap() {
        assert_eq!((c.run_id.as_str(), c.attempt), (run_id.as_str(), 1));
        let completion = l.complete_task(ok_report(&c, "w1")).await.unwrap();
        assert_eq!(completion.task_status, TaskStatus::Succeeded);
        done.push(c.task_key);
        last = Some(completion.run_status);
    }
    let keys: Vec<_> = detail.tasks.iter().map(|t| t.task_key.clone()).collect();
    assert_eq!(done, keys, "every task claimed once, in plan order");
    assert_eq!(last, Some(RunStatus::Succeeded));

    let detail = l.run_detail(&run_id).await.unwrap();
    assert_eq!(detail.run.status, RunStatus::Succeeded);
    assert_eq!((detail.run.err_code.as_deref(), detail.run.next_action.as_deref()), (None, None));
    assert!(detail.tasks.iter().all(|t| t.status == TaskStatus::Succeeded));
    let steps: Vec<_> = detail.steps.iter().map(|s| (s.step, s.outcome)).collect();
    use StepOutcome::{Started, Succeeded};
    assert_eq!(
        steps,
        vec![
            (Step::Compile, Started),
            (Step::Compile, Succeeded),
            (Step::Decide, Started),
            (Step::Decide, Succeeded),
            (Step::Execute, Started),
            (Step::Execute, Succeeded),
        ]
    );
    assert!(detail.steps.iter().all(|s| s.generation == 0));
    assert_eq!(detail.run.last_step, Some(Step::Execute));

    let events = l.events(&run_id, 0, 10_000).await.unwrap();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "seq 1..n without gaps");
    assert_eq!(events[0].kind, "run_created");
    assert_eq!(events.iter().filter(|e| e.kind == "task_finished").count(), 3);
    assert!(events.iter().any(|e| e.kind == "approval_required"));
    let last = events.last().unwrap();
    assert_eq!((last.kind.as_str(), &last.data["to"]), ("state_changed", &json!("succeeded")));
    let tail = l.events(&run_id, 3, 2).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);

    // run_steps and attempts are append-only, even for direct SQL: never updated, and deleted
    // only with their finished run when maintenance prunes it (see tests/maintenance.rs, which
    // also shows an unfinished run's history cannot be deleted).
    let db = raw(l);
    for sql in ["UPDATE run_steps SET detail = 'tampered'", "UPDATE attempts SET outcome = 'failed'"] {
        let err = db.execute(sql, []).expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(count(l, "SELECT COUNT(*) FROM run_steps WHERE detail = 'tampered'").await, 0);
    assert_eq!(count(l, &format!("SELECT COUNT(*) FROM run_steps WHERE run_id = '{run_id}'")).await, 6);
    assert_eq!(count(l, "SELECT COUNT(*) FROM attempts WHERE outcome = 'succeeded'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_without_sha_and_plans_that_skip_the_gate() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, gated) = enqueue(l, "p", "demo", 1, json!({})).await;
    let run = compile(l, &gated, demo_plan(&["x"], 1), true).await;
    assert_eq!(run.status, RunStatus::WaitingInput);
    let run = l.approve_plan(&gated, "bob", None).await.unwrap();
    assert_eq!((run.status, run.approved_plan_sha256.clone()), (RunStatus::Executing, run.plan_sha256.clone()));

    let (_, open) = enqueue(l, "p", "sandbox-default", 1, json!({})).await;
    let run = compile(l, &open, shell_plan(2, 1), false).await;
    assert_eq!(run.status, RunStatus::Executing);
    assert_eq!(run.approved_by.as_deref(), Some("recipe:sandbox-default"));
    assert_eq!(l.run_detail(&open).await.unwrap().tasks.len(), 2);
}

fn expect_kind<T: std::fmt::Debug>(r: Result<T, LedgerError>, kind: &str, what: &str) -> LedgerError {
    match r {
        Err(e) if e.kind().as_str() == kind => e,
        other => panic!("{what}: expected {kind}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_have_the_right_kinds() {
    let t = TestLedger::new();
    let l = &t.ledger;

    // A queued run can be neither approved nor retried.
    let (_, queued) = enqueue(l, "p", "demo", 1, json!({})).await;
    let e = expect_kind(l.approve_plan(&queued, "alice", None).await, "illegal_state", "approve queued");
    assert!(matches!(e, LedgerError::IllegalState(_)), "{e:?}");
    let e = expect_kind(l.retry_run(&queued).await, "illegal_state", "retry queued");
    assert!(matches!(e, LedgerError::IllegalState(_)), "{e:?}");

    // Cancel works once; canceling a canceled run is illegal.
    let run = l.cancel_run(&queued).await.unwrap();
    assert_eq!(run.status, RunStatus::Canceled);
    let e = expect_kind(l.cancel_run(&queued).await, "illegal_state", "cancel canceled");
    assert!(matches!(e, LedgerError::IllegalState(_)), "{e:?}");
    expect_kind(l.retry_run(&queued).await, "illegal_state", "retry canceled");
    assert!(l.claim_compile("c", LONG_LEASE).await.unwrap().is_none(), "canceled runs are not compiled");

    // An executing run cannot be approved again or retried.
    let (_, executing) = executing_run(l, "p", shell_plan(1, 1)).await;
    expect_kind(l.approve_plan(&executing, "alice", None).await, "illegal_state", "approve executing");
    expect_kind(l.retry_run(&executing).await, "illegal_state", "retry executing");

    // A succeeded run: retry is drift, approve and cancel are illegal.
    let c = claim(l, "w").await;
    assert_eq!(l.complete_task(ok_report(&c, "w")).await.unwrap().run_status, RunStatus::Succeeded);
    let e = expect_kind(l.retry_run(&executing).await, "retry_drift", "retry succeeded");
    assert!(matches!(e, LedgerError::RetryDrift(_)), "{e:?}");
    expect_kind(l.approve_plan(&executing, "alice", None).await, "illegal_state", "approve succeeded");
    expect_kind(l.cancel_run(&executing).await, "illegal_state", "cancel succeeded");
    assert_eq!(l.run_detail(&executing).await.unwrap().run.status, RunStatus::Succeeded);

    // Unknown ids.
    let ghost = "01900000-0000-7000-8000-000000000000";
    expect_kind(l.run_detail(ghost).await, "not_found", "run_detail");
    expect_kind(l.approve_plan(ghost, "alice", None).await, "not_found", "approve");
    expect_kind(l.retry_run(ghost).await, "not_found", "retry");
    expect_kind(l.cancel_run(ghost).await, "not_found", "cancel");
    expect_kind(l.events(ghost, 0, 10).await, "not_found", "events");
    expect_kind(l.intent(ghost).await, "not_found", "intent");

    // A run for an unknown intent creates nothing.
    let runs_before = count(l, "SELECT COUNT(*) FROM runs").await;
    let orphan = NewRun { intent_id: ghost.into(), ..new_run("p", "demo", 1) };
    let e = expect_kind(l.submit(None, Submission::Run(orphan)).await, "not_found", "run of unknown intent");
    assert!(matches!(e, LedgerError::NotFound { what: "intent", .. }), "{e:?}");
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, runs_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_queued_tasks_and_tells_heartbeats() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(3, 1)).await;
    let c = claim(l, "w").await;
    assert_eq!(l.cancel_run(&run).await.unwrap().status, RunStatus::Canceled);
    assert_eq!(l.heartbeat(&c, "w", LONG_LEASE).await.unwrap(), machina_ledger::Heartbeat::Canceled);
    let d = l.run_detail(&run).await.unwrap();
    let statuses: Vec<_> = d.tasks.iter().map(|t| t.status).collect();
    assert_eq!(statuses, vec![TaskStatus::Leased, TaskStatus::Canceled, TaskStatus::Canceled]);
    assert!(l.claim_task("w2", LONG_LEASE).await.unwrap().is_none());
    let done = l.complete_task(ok_report(&c, "w")).await.unwrap();
    assert_eq!(done.run_status, RunStatus::Canceled, "a late completion does not revive the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_failures_follow_the_retry_policy() {
    let t = TestLedger::new();
    let l = &t.ledger;

    // A plan the recipe rejects fails the run at once; an operator retry compiles again.
    let (_, run) = enqueue(l, "p", "demo", 1, json!({})).await;
    let job = l.claim_compile("c", LONG_LEASE).await.unwrap().unwrap();
    let r = l.finish_compile(&job, "c", Err((ErrCode::PlanInvalid, "too many steps".into()))).await.unwrap();
    assert_eq!(
        (r.status, r.err_code.as_deref(), r.next_action.as_deref()),
        (RunStatus::Failed, Some("PLAN_INVALID"), Some("RETRY"))
    );
    assert_eq!(r.last_step, Some(Step::Compile));
    let r = l.retry_run(&run).await.unwrap();
    assert_eq!((r.status, r.generation, r.err_code.clone()), (RunStatus::Queued, 1, None));
    let r = compile(l, &run, demo_plan(&["a"], 1), true).await;
    assert_eq!(r.status, RunStatus::WaitingInput);

    // BOOT_FAIL while compiling is retried up to max_attempts, then REPAIR.
    let (_, run) = enqueue(l, "q", "demo", 1, json!({})).await;
    for attempt in 1..=3u32 {
        let job = l.claim_compile("c", LONG_LEASE).await.unwrap().expect("requeued run");
        assert_eq!((job.run.id.as_str(), job.compile_attempt), (run.as_str(), attempt));
        let r = l.finish_compile(&job, "c", Err((ErrCode::BootFail, "no sandbox".into()))).await.unwrap();
        let expected = if attempt < 3 { RunStatus::Queued } else { RunStatus::RetriesExceeded };
        assert_eq!(r.status, expected, "after compile attempt {attempt}");
    }
    let r = l.run_detail(&run).await.unwrap().run;
    assert_eq!((r.err_code.as_deref(), r.next_action.as_deref()), (Some("BOOT_FAIL"), Some("REPAIR")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_compile_retries_exceeded_gets_a_fresh_budget() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = enqueue(l, "p", "demo", 1, json!({})).await;
    for _ in 1..=3 {
        let job = l.claim_compile("c", LONG_LEASE).await.unwrap().expect("requeued run");
        l.finish_compile(&job, "c", Err((ErrCode::BootFail, "no sandbox".into()))).await.unwrap();
    }
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::RetriesExceeded);

    // An operator retry gives CompileST a fresh budget, as it does for tasks:
    // one more BOOT_FAIL is retried, not immediately retries_exceeded again.
    assert_eq!(l.retry_run(&run).await.unwrap().status, RunStatus::Queued);
    let job = l.claim_compile("c", LONG_LEASE).await.unwrap().expect("retried run");
    let r = l.finish_compile(&job, "c", Err((ErrCode::BootFail, "no sandbox".into()))).await.unwrap();
    assert_eq!(
        r.status,
        RunStatus::Queued,
        "first BOOT_FAIL after retry_run must be retried (fresh budget), got {} / {:?}",
        r.status,
        r.next_action
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_compile_lease_is_reclaimed_and_fenced() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = enqueue(l, "p", "demo", 1, json!({})).await;
    let job = l.claim_compile("c1", 1_000).await.unwrap().unwrap();
    assert_eq!(l.reclaim(None).await.unwrap(), 0, "lease not expired yet");
    t.clock.advance_ms(2_000);
    assert_eq!(l.reclaim(None).await.unwrap(), 1);
    let d = l.run_detail(&run).await.unwrap();
    assert_eq!(d.run.status, RunStatus::Queued);
    let last = d.steps.last().unwrap();
    assert_eq!(
        (last.step, last.outcome, last.err_code.as_deref()),
        (Step::Compile, StepOutcome::Failed, Some("LEASE_LOST"))
    );
    let c = compiled(l, demo_plan(&["a"], 1), true).await;
    assert_stale(l.finish_compile(&job, "c1", Ok(c.clone())).await);
    let job2 = l.claim_compile("c2", LONG_LEASE).await.unwrap().unwrap();
    assert_eq!(job2.compile_attempt, 2);
    assert_stale(l.finish_compile(&job, "c1", Ok(c.clone())).await);
    assert_eq!(l.finish_compile(&job2, "c2", Ok(c)).await.unwrap().status, RunStatus::WaitingInput);
}
