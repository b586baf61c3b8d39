//! Group commit: many concurrent submissions from tokio tasks all commit, and
//! an operation that fails inside a shared batch rolls back only itself.

mod common;

use common::*;
use machina_ledger::{LedgerError, NewRun, Submission};
use serde_json::json;
use std::collections::HashSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_all_commit() {
    let t = TestLedger::new();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let l = t.ledger.clone();
            tokio::spawn(async move {
                let s = Submission::Enqueue(new_intent(json!({ "n": i })), new_run(&format!("p{}", i % 7), "demo", 1));
                l.submit(None, s).await
            })
        })
        .collect();
    let mut runs = HashSet::new();
    for h in handles {
        let s = h.await.unwrap().expect("submission failed");
        assert!(!s.replayed);
        assert!(runs.insert(body_id(&s.body["run"])), "run id handed out twice");
    }
    assert_eq!(runs.len(), 200);
    let l = &t.ledger;
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs WHERE status = 'queued'").await, 200);
    assert_eq!(count(l, "SELECT COUNT(*) FROM intents").await, 200);
    assert_eq!(count(l, "SELECT COUNT(*) FROM partitions").await, 7);
    for id in &runs {
        assert_eq!(l.run_detail(id).await.unwrap().run.id, *id);
    }
    let t = t.reopen();
    assert_eq!(count(&t.ledger, "SELECT COUNT(*) FROM runs").await, 200, "acknowledged runs are durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_roll_back_its_batch() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (intent, _) = enqueue(l, "p", "demo", 1, json!({})).await;

    // Every fifth submission names an intent that does not exist; all are in flight at once.
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let l = l.clone();
            let bad = i % 5 == 0;
            let run = NewRun {
                intent_id: if bad { format!("no-such-intent-{i}") } else { intent.clone() },
                ..new_run("p", "demo", 1)
            };
            tokio::spawn(async move { (bad, l.submit(None, Submission::Run(run)).await) })
        })
        .collect();
    let mut good = HashSet::new();
    for h in handles {
        match h.await.unwrap() {
            (false, Ok(s)) => assert!(good.insert(body_id(&s.body))),
            (true, Err(LedgerError::NotFound { what: "intent", .. })) => {}
            (bad, other) => panic!("bad={bad}: {other:?}"),
        }
    }
    assert_eq!(good.len(), 160);
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 161);
    assert_eq!(count(l, &format!("SELECT COUNT(*) FROM runs WHERE intent_id = '{intent}'")).await, 161);
    for id in &good {
        let events = l.events(id, 0, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1], "run {id} lost its events");
    }
    assert_eq!(count(l, "SELECT COUNT(*) FROM events").await, 161);
}

/// Operations that queue up while the writer waits for the lock go out in one
/// transaction, and a failing one among them rolls back only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_operations_share_one_transaction() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (intent, _) = enqueue(l, "p", "demo", 1, json!({})).await;
    let (txns_before, ops_before) = l.writer_stats();
    // Another process holds the write lock: the writer blocks in BEGIN IMMEDIATE on its
    // first batch while everything else queues behind it.
    let locker = raw(l);
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let l = l.clone();
            let mut run = new_run("p", "demo", 1);
            run.intent_id = if i % 10 == 0 { "no-such-intent".into() } else { intent.clone() };
            tokio::spawn(async move { l.submit(None, Submission::Run(run)).await })
        })
        .collect();
    // Let every submission reach the writer's queue, then release the lock.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    locker.execute_batch("COMMIT").unwrap();
    let (mut ok, mut refused) = (0, 0);
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(LedgerError::NotFound { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, refused), (90, 10));
    let (txns, ops) = l.writer_stats();
    assert_eq!(ops - ops_before, 100);
    assert!(txns - txns_before <= 3, "100 queued operations took {} transactions", txns - txns_before);
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 91);
}
