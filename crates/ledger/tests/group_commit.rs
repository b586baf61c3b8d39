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
