//! How workers take work: compiles before tasks, completion and next claim in one
//! commit, the idle read check, handing back unstarted tasks, and dynamic fan-out.

mod common;

use common::*;
use machina_core::{ErrCode, RunStatus, TaskSpec, TaskStatus};
use machina_ledger::{LedgerError, Work};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_compiles_come_before_tasks_and_ride_on_completions() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, busy) = executing_run(l, "a", shell_plan(3, 1)).await;
    assert!(l.has_work().await.unwrap());
    let first = match l.claim_work("w", LONG_LEASE).await.unwrap() {
        Some(Work::Task(task)) => task,
        other => panic!("expected a task, got {other:?}"),
    };
    // A new run arrives while the worker is busy: its compile is claimed with the completion.
    let (_, fresh) = enqueue(l, "b", "demo", 1, json!({"words": ["x"]})).await;
    let (next, done) = l.complete_and_claim(ok_report(&first, "w"), LONG_LEASE).await.unwrap();
    let done = done.await.unwrap();
    assert_eq!(done.task_status, TaskStatus::Succeeded);
    match next {
        Some(Work::Compile(job)) => assert_eq!(job.run.id, fresh),
        other => panic!("expected the new run's compile first, got {other:?}"),
    }
    // Then tasks again, one per commit, until the run is done.
    let mut next = l.claim_work("w", LONG_LEASE).await.unwrap();
    let mut committed = 1;
    while let Some(Work::Task(task)) = next {
        let (following, done) = l.complete_and_claim(ok_report(&task, "w"), LONG_LEASE).await.unwrap();
        done.await.unwrap();
        committed += 1;
        next = following;
    }
    assert_eq!(committed, 3);
    assert_eq!(l.run_detail(&busy).await.unwrap().run.status, RunStatus::Succeeded);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts WHERE seen > 1").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_work_sees_backoff_and_expired_leases() {
    let t = TestLedger::new();
    let l = &t.ledger;
    assert!(!l.has_work().await.unwrap(), "empty ledger");
    let (_, run) = executing_run(l, "a", shell_plan(1, 1)).await;
    let task = l.claim_task("w", 1_000).await.unwrap().unwrap();
    assert!(!l.has_work().await.unwrap(), "the only task is leased and its lease is live");
    t.clock.advance_ms(2_000);
    assert!(l.has_work().await.unwrap(), "an expired lease is work (to reclaim)");
    assert_eq!(l.reclaim(None).await.unwrap(), 1);
    assert!(!l.has_work().await.unwrap(), "the reclaimed task waits out its backoff");
    t.clock.advance_ms(120_000);
    assert!(l.has_work().await.unwrap());
    let again = claim(l, "w2").await;
    assert_eq!((again.task_id, again.attempt), (task.task_id, 2));
    assert_eq!(task_status(l, &run).await, TaskStatus::Leased);
}

async fn task_status(l: &machina_ledger::Ledger, run: &str) -> TaskStatus {
    l.run_detail(run).await.unwrap().tasks[0].status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_task_does_not_use_up_a_retry() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "a", shell_plan(1, 1)).await;
    // Released twice (two worker shutdowns), then failing with a retryable code twice:
    // with max_attempts 3 the run must still be alive after the second failure.
    for _ in 0..2 {
        let task = claim(l, "w").await;
        l.release_task(&task, "w").await.unwrap();
        assert_stale(l.complete_task(ok_report(&task, "w")).await);
    }
    for round in 0..2 {
        let task = claim(l, "w").await;
        l.complete_task(fail_report(&task, "w", ErrCode::BootFail)).await.unwrap();
        t.clock.advance_ms(120_000);
        assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Executing, "round {round}");
    }
    let task = claim(l, "w").await;
    assert_eq!(task.attempt, 5, "attempt numbers stay monotonic");
    l.complete_task(ok_report(&task, "w")).await.unwrap();
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Succeeded);
    // Only another holder's release is refused.
    let (_, run2) = executing_run(l, "b", shell_plan(1, 1)).await;
    let held = claim(l, "w").await;
    assert!(matches!(l.release_task(&held, "intruder").await, Err(LedgerError::StaleLease(_))));
    let _ = run2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_tasks_get_plan_keys_and_only_while_executing() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (intent, run) = executing_run(l, "a", shell_plan(1, 4)).await;
    let spec = TaskSpec {
        name: "extra".into(),
        tool: "shell".into(),
        argv: vec!["/usr/bin/true".into()],
        timeout_secs: 5,
        lease: None,
    };
    assert_eq!(l.append_tasks(&run, vec![spec.clone()]).await.unwrap(), 1);
    let detail = l.run_detail(&run).await.unwrap();
    assert_eq!(detail.tasks.len(), 2);
    assert_eq!(detail.tasks[1].index, 1);
    assert_eq!(detail.tasks[1].task_key, machina_core::task_key(&intent, &run, machina_core::Step::Execute, &spec));
    // The same spec again is the same key: refused, not duplicated.
    let err = l.append_tasks(&run, vec![spec.clone()]).await.unwrap_err();
    assert_eq!(err.kind().as_str(), "conflict", "{err}");
    assert_eq!(l.run_detail(&run).await.unwrap().tasks.len(), 2);
    // Later appends are encoded by the client (it knows the run's intent by now), in line
    // for a few tasks and on a blocking thread for many: the same keys either way.
    let named = |n: usize| TaskSpec { name: format!("more-{n}"), ..spec.clone() };
    assert_eq!(l.append_tasks(&run, vec![named(0)]).await.unwrap(), 1);
    assert_eq!(l.append_tasks(&run, (1..201).map(named).collect()).await.unwrap(), 200);
    let detail = l.run_detail(&run).await.unwrap();
    assert_eq!(detail.tasks.len(), 203);
    for (i, t) in detail.tasks[2..].iter().enumerate() {
        assert_eq!(t.task_key, machina_core::task_key(&intent, &run, machina_core::Step::Execute, &named(i)), "{i}");
    }
    let err = l.append_tasks(&run, vec![named(7)]).await.unwrap_err();
    assert_eq!(err.kind().as_str(), "conflict", "{err}");
    // Rows go in several per statement: a duplicate inside one (after a full statement of
    // 64 new ones) is named, and none of the append's tasks are kept.
    let key = |n: usize| machina_core::task_key(&intent, &run, machina_core::Step::Execute, &named(n));
    let mut specs: Vec<TaskSpec> = (300..370).map(named).collect();
    specs.insert(66, named(150));
    let err = l.append_tasks(&run, specs).await.unwrap_err();
    assert_eq!(err.kind().as_str(), "conflict", "{err}");
    assert!(err.to_string().contains(&key(150)), "names the duplicate: {err}");
    // The same task twice in one append: the second is the duplicate.
    let err = l.append_tasks(&run, vec![named(400), named(401), named(400), named(402)]).await.unwrap_err();
    assert!(err.to_string().contains(&key(400)), "{err}");
    assert_eq!(l.run_detail(&run).await.unwrap().tasks.len(), 203, "nothing of the refused appends kept");
    assert_eq!(l.counter_drift().await.unwrap(), 0, "the run's counters agree with its tasks");
    assert_eq!(l.append_tasks(&run, vec![named(300)]).await.unwrap(), 1, "its new tasks can still be added");
    assert_eq!(l.run_detail(&run).await.unwrap().tasks[203].index, 203);
    l.cancel_run(&run).await.unwrap();
    let err = l.append_tasks(&run, vec![spec]).await.unwrap_err();
    assert_eq!(err.kind().as_str(), "illegal_state", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_stops_its_running_and_released_tasks() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "a", shell_plan(3, 3)).await;
    let a = claim(l, "w1").await;
    let b = claim(l, "w2").await;
    let c = claim(l, "w3").await;
    // One task fails closed: the run fails, and the others are told to stop at their next heartbeat.
    l.complete_task(fail_report(&a, "w1", ErrCode::CmdNonzero)).await.unwrap();
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Failed);
    assert_eq!(l.heartbeat(&b, "w2", LONG_LEASE).await.unwrap(), machina_ledger::Heartbeat::Canceled);
    // A worker shutting down hands its unstarted task back: it must not become runnable again.
    l.release_task(&c, "w3").await.unwrap();
    assert_eq!(l.run_detail(&run).await.unwrap().tasks[2].status, TaskStatus::Canceled);
    l.complete_task(fail_report(&b, "w2", ErrCode::Canceled)).await.unwrap();
    assert!(!l.has_work().await.unwrap(), "nothing claimable is left");
    assert_eq!(count(l, "SELECT leased_tasks FROM runs").await, 0, "lease counter back to zero");
}

/// A task killed because its run failed reports CANCELED; if the operator retried the run
/// meanwhile, that report must not fail the retried run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_straggler_killed_by_a_failed_run_does_not_fail_its_retry() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "a", shell_plan(2, 2)).await;
    let a = claim(l, "w1").await;
    let b = claim(l, "w2").await;
    l.complete_task(fail_report(&a, "w1", ErrCode::CmdNonzero)).await.unwrap();
    assert_eq!(l.heartbeat(&b, "w2", LONG_LEASE).await.unwrap(), machina_ledger::Heartbeat::Canceled);
    l.retry_run(&run).await.unwrap();
    let done = l.complete_task(fail_report(&b, "w2", ErrCode::Canceled)).await.unwrap();
    assert_eq!(done.task_status, TaskStatus::Queued);
    assert_eq!(done.run_status, RunStatus::Executing, "the retried run goes on");
    // Both tasks run again, each with a full retry budget, and the run succeeds.
    while let Some(task) = l.claim_task("w3", LONG_LEASE).await.unwrap() {
        l.complete_task(ok_report(&task, "w3")).await.unwrap();
    }
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Succeeded);
    assert_eq!(l.counter_drift().await.unwrap(), 0);
}
