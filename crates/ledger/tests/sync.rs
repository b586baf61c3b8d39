//! Durable acknowledgements: with FULL durability a write is answered only after the
//! ledger's own sync of the WAL, claims are answered at COMMIT without one, the completion
//! half of `complete_and_claim` follows its claim once synced, and a sync the disk refuses
//! poisons the ledger instead of acknowledging anything.

mod common;

use common::*;
use machina_core::ManualClock;
use machina_ledger::{Durability, Ledger, LedgerError, Work};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_are_synced_and_claims_are_not() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (syncs0, _) = l.sync_stats();
    let (_, run) = enqueue(l, "p", "demo", 1, json!({"words": ["a", "b"]})).await;
    let (syncs1, _) = l.sync_stats();
    assert_eq!(syncs1, syncs0 + 1, "the submission was answered after one sync");

    // A compile claim alone is answered at COMMIT: no sync.
    let job = l.claim_compile("c", LONG_LEASE).await.unwrap().expect("queued run");
    assert_eq!(l.sync_stats().0, syncs1, "a claim waits for no sync");
    l.finish_compile(&job, "c", Ok(compiled(l, shell_plan(2, 1), false).await)).await.unwrap();
    let after_compile = l.sync_stats().0;
    assert!(after_compile > syncs1);

    // The completion half follows the claim half, once synced.
    let first = match l.claim_work("w", LONG_LEASE).await.unwrap() {
        Some(Work::Task(t)) => t,
        other => panic!("expected a task, got {other:?}"),
    };
    let (next, done) = l.complete_and_claim(ok_report(&first, "w"), LONG_LEASE).await.unwrap();
    let next = match next {
        Some(Work::Task(t)) => t,
        other => panic!("expected the second task with the commit, got {other:?}"),
    };
    let done = done.await.unwrap();
    assert_eq!(done.task_status.as_str(), "succeeded");
    assert!(l.sync_stats().0 > after_compile, "the completion was synced");
    let (none, done) = l.complete_and_claim(ok_report(&next, "w"), LONG_LEASE).await.unwrap();
    assert!(none.is_none(), "{none:?}");
    assert_eq!(done.await.unwrap().run_status.as_str(), "succeeded");

    let t = t.reopen();
    assert_eq!(t.ledger.run_detail(&run).await.unwrap().run.status.as_str(), "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_durability_never_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &ManualClock::new(T0));
    o.durability = Durability::Normal;
    let l = Ledger::open(o).unwrap();
    enqueue(&l, "p", "demo", 1, json!({})).await;
    assert_eq!(l.sync_stats().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sync_poisons_the_ledger() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, kept) = enqueue(l, "p", "demo", 1, json!({})).await;
    // The WAL vanishing under the ledger stands in for a disk that fails fdatasync: the sync
    // cannot confirm the next commit, so it must not be acknowledged.
    std::fs::remove_file(l.path().with_extension("db-wal")).unwrap();
    let err = l.submit(None, submission_for("p")).await.expect_err("an unconfirmed write is not acknowledged");
    assert!(matches!(err, LedgerError::Poisoned(_)), "{err:?}");
    assert!(err.to_string().contains("must restart"), "{err}");
    assert!(err.is_fatal());
    // Every later write and the health check say so too.
    let again = l.submit(None, submission_for("p")).await.expect_err("poisoned");
    assert!(matches!(again, LedgerError::Poisoned(_)), "{again:?}");
    assert!(l.claim_work("w", LONG_LEASE).await.is_err());
    assert!(matches!(l.ping().await, Err(LedgerError::Poisoned(_))));
    assert!(l.poisoned().is_some());
    drop(kept);
}

fn submission_for(partition: &str) -> machina_ledger::Submission {
    machina_ledger::Submission::Enqueue(new_intent(json!({})), new_run(partition, "demo", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_starts_over_under_sustained_writes() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(1, 1)).await;
    // 64 writers without a pause: a checkpoint on another connection alone never catches up
    // with the last frame, and the WAL would grow by ~2.7 KiB per task (135 MiB here); it
    // starts over once past 16 MiB (checkpoint::WAKE_FRAMES).
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writers: Vec<_> = (0..64)
        .map(|_| {
            let (l, run, next) = (l.clone(), run.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 50_000 {
                        break;
                    }
                    let spec = machina_core::TaskSpec { name: format!("t{i}"), ..shell_plan(1, 1).tasks.remove(0) };
                    l.append_tasks(&run, vec![spec]).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let wal = std::fs::metadata(l.path().with_extension("db-wal")).unwrap().len();
    assert!(wal < 32 << 20, "the WAL grew to {} MiB instead of starting over", wal >> 20);
    assert!(count(l, "SELECT COUNT(*) FROM tasks").await > 50_000);
}
