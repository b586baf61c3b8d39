//! The per-run counters the claim path relies on (queued, leased, pending, task and
//! event counts) stay equal to what the tasks and events tables say, through every
//! kind of transition.

mod common;

use common::*;
use machina_core::{ErrCode, RunStatus, TaskSpec};
use serde_json::json;

async fn assert_no_drift(l: &machina_ledger::Ledger, step: &str) {
    assert_eq!(l.counter_drift().await.unwrap(), 0, "counters drifted after: {step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_every_transition() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "a", shell_plan(6, 3)).await;
    assert_no_drift(l, "fan-out").await;
    let a = claim(l, "w1").await;
    let b = claim(l, "w2").await;
    let c = claim(l, "w3").await;
    assert!(l.claim_task("w4", LONG_LEASE).await.unwrap().is_none(), "concurrency cap of 3");
    assert_no_drift(l, "three claims").await;
    l.complete_task(ok_report(&a, "w1")).await.unwrap();
    assert_no_drift(l, "success").await;
    l.complete_task(fail_report(&b, "w2", ErrCode::BootFail)).await.unwrap();
    assert_no_drift(l, "retryable failure (requeued)").await;
    l.release_task(&c, "w3").await.unwrap();
    assert_no_drift(l, "release").await;
    let spec = TaskSpec {
        name: "late".into(),
        tool: "shell".into(),
        argv: vec!["/usr/bin/true".into()],
        timeout_secs: 5,
        lease: None,
    };
    l.append_tasks(&run, vec![spec]).await.unwrap();
    assert_no_drift(l, "append").await;
    let d = claim(l, "w1").await;
    let _lost = l.claim_task("w2", 1).await.unwrap().expect("a second task");
    t.clock.advance_ms(10);
    assert!(l.reclaim(None).await.unwrap() >= 1);
    assert_no_drift(l, "reclaim").await;
    l.complete_task(fail_report(&d, "w1", ErrCode::CmdNonzero)).await.unwrap();
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Failed);
    assert_no_drift(l, "terminal failure cancels the queued tasks").await;
    l.retry_run(&run).await.unwrap();
    assert_no_drift(l, "retry requeues failed and canceled tasks").await;
    t.clock.advance_ms(600_000);
    while let Some(task) = l.claim_task("w9", LONG_LEASE).await.unwrap() {
        l.complete_task(ok_report(&task, "w9")).await.unwrap();
        assert_no_drift(l, "draining").await;
    }
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Succeeded);
    let (_, other) = enqueue(l, "b", "demo", 1, json!({"words": ["x"]})).await;
    l.cancel_run(&other).await.unwrap();
    assert_no_drift(l, "cancel of a queued run").await;
    let (_, third) = executing_run(l, "c", shell_plan(4, 2)).await;
    let e = claim(l, "w1").await;
    l.cancel_run(&third).await.unwrap();
    l.complete_task(fail_report(&e, "w1", ErrCode::Canceled)).await.unwrap();
    assert_no_drift(l, "cancel of an executing run").await;
}
