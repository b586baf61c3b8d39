//! Arbitration in the ledger: a claimed compile sees the active runs of its partition; a
//! deferred run waits until the run it is behind has finished; an abort cancels the active
//! run (queued tasks canceled at once, running ones at their next heartbeat) and both runs
//! record the decision; a parallel decision is remembered.

mod common;

use common::*;
use machina_core::RunStatus;
use machina_ledger::{Arbitration, Heartbeat};
use serde_json::json;

async fn events_of(t: &TestLedger, run: &str, kind: &str) -> Vec<serde_json::Value> {
    let all = t.ledger.events(run, 0, 1000).await.unwrap();
    all.into_iter().filter(|e| e.kind == kind).map(|e| e.data).collect()
}

#[tokio::test]
async fn a_deferred_run_waits_for_the_active_one() {
    let t = TestLedger::new();
    let (_, active) = executing_run(&t.ledger, "p", shell_plan(1, 1)).await;
    let (_, late) = enqueue(&t.ledger, "p", "sandbox-default", 1, json!({})).await;
    let job = t.ledger.claim_compile("w", LONG_LEASE).await.unwrap().unwrap();
    assert_eq!(job.run.id, late);
    assert_eq!(job.rivals.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), [active.as_str()]);
    let run = t
        .ledger
        .arbitrate(&job, "w", Arbitration::Defer { behind: active.clone() }, json!({"reason": "test"}))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    let ev = events_of(&t, &late, "arbitration").await;
    assert_eq!((ev[0]["decision"].as_str(), ev[0]["behind"].as_str()), (Some("defer"), Some(active.as_str())));
    // Not compiled while the active run runs…
    assert!(t.ledger.claim_compile("w", LONG_LEASE).await.unwrap().is_none());
    // …and claimable once it has finished; a deferral spent no compile attempt.
    let task = t.ledger.claim_task("w", LONG_LEASE).await.unwrap().unwrap();
    t.ledger.complete_task(ok_report(&task, "w")).await.unwrap();
    let again = t.ledger.claim_compile("w", LONG_LEASE).await.unwrap().expect("claimable now");
    assert_eq!(again.run.id, late);
    assert!(again.rivals.is_empty(), "the partition is idle now");
    let done = t.ledger.finish_compile(&again, "w", Ok(compiled(&t.ledger, shell_plan(1, 1), false).await)).await;
    assert_eq!(done.unwrap().status, RunStatus::Executing);
}

#[tokio::test]
async fn an_abort_cancels_the_active_run_and_both_record_it() {
    let t = TestLedger::new();
    let (_, active) = executing_run(&t.ledger, "p", shell_plan(2, 1)).await;
    let running = t.ledger.claim_task("w", LONG_LEASE).await.unwrap().unwrap();
    let (_, late) = enqueue(&t.ledger, "p", "sandbox-default", 1, json!({})).await;
    let job = t.ledger.claim_compile("w2", LONG_LEASE).await.unwrap().unwrap();
    let run = t
        .ledger
        .arbitrate(&job, "w2", Arbitration::Abort { victims: vec![active.clone()] }, json!({"reason": "newer work"}))
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Compiling, "the new run goes on compiling");
    assert_eq!(t.ledger.run_status(&active).await.unwrap(), RunStatus::Canceled);
    assert_eq!(t.ledger.heartbeat(&running, "w", LONG_LEASE).await.unwrap(), Heartbeat::Canceled);
    let by = events_of(&t, &active, "aborted_by_arbitration").await;
    assert_eq!(by[0]["by"].as_str(), Some(late.as_str()));
    assert_eq!(events_of(&t, &late, "arbitration").await[0]["decision"], "abort");
}

#[tokio::test]
async fn a_parallel_decision_is_not_asked_again() {
    let t = TestLedger::new();
    executing_run(&t.ledger, "p", shell_plan(1, 1)).await;
    let (_, late) = enqueue(&t.ledger, "p", "sandbox-default", 1, json!({})).await;
    let job = t.ledger.claim_compile("w", LONG_LEASE).await.unwrap().unwrap();
    assert_eq!(job.rivals.len(), 1);
    t.ledger.arbitrate(&job, "w", Arbitration::Proceed, json!({"reason": "fine"})).await.unwrap();
    // The compile fails and is retried: the run is claimed again without rivals to decide on.
    t.ledger.finish_compile(&job, "w", Err((machina_core::ErrCode::BootFail, "flaky".into()))).await.unwrap();
    let again = t.ledger.claim_compile("w", LONG_LEASE).await.unwrap().unwrap();
    assert_eq!(again.run.id, late);
    assert!(again.rivals.is_empty());
    // A stale holder cannot arbitrate.
    let stale = t.ledger.arbitrate(&job, "w", Arbitration::Proceed, json!({})).await;
    assert!(matches!(stale, Err(machina_ledger::LedgerError::StaleLease(_))), "{stale:?}");
}

#[tokio::test]
async fn runs_arbitrated_at_once_never_wait_for_each_other() {
    let t = TestLedger::new();
    let (_, z) = executing_run(&t.ledger, "p", shell_plan(1, 1)).await;
    let (_, x) = enqueue(&t.ledger, "p", "sandbox-default", 1, json!({})).await;
    let (_, y) = enqueue(&t.ledger, "p", "sandbox-default", 1, json!({})).await;
    let jx = t.ledger.claim_compile("w1", LONG_LEASE).await.unwrap().unwrap();
    let jy = t.ledger.claim_compile("w2", LONG_LEASE).await.unwrap().unwrap();
    assert_eq!((jx.run.id.as_str(), jy.run.id.as_str()), (x.as_str(), y.as_str()));
    assert_eq!(jy.rivals.len(), 2, "Y saw Z and the compiling X");
    t.ledger.arbitrate(&jx, "w1", Arbitration::Defer { behind: z.clone() }, json!({"reason": "r"})).await.unwrap();
    // Y chose to wait for X, which is queued by now: it waits for Z instead, never for X.
    t.ledger.arbitrate(&jy, "w2", Arbitration::Defer { behind: x.clone() }, json!({"reason": "r"})).await.unwrap();
    assert_eq!(events_of(&t, &y, "arbitration").await[0]["behind"].as_str(), Some(z.as_str()));
    let task = t.ledger.claim_task("w", LONG_LEASE).await.unwrap().unwrap();
    t.ledger.complete_task(ok_report(&task, "w")).await.unwrap();
    let next = t.ledger.claim_compile("w1", LONG_LEASE).await.unwrap().expect("X or Y is claimable once Z is done");
    assert!([x.as_str(), y.as_str()].contains(&next.run.id.as_str()));
}
