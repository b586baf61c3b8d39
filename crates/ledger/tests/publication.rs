//! Publication and merged appends: a task starts only once its creation is on disk (a claim
//! of a task nobody has published yet waits for a sync), what is published survives a
//! restart, and concurrent appends to one run merge into one write without losing or
//! doubling a task, each client still getting its own answer.

mod common;

use common::*;
use machina_core::{ManualClock, TaskSpec};
use machina_ledger::{Durability, Ledger};
use rusqlite::Connection;

fn spec(name: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        tool: "shell".into(),
        argv: vec!["/usr/bin/true".into()],
        timeout_secs: 5,
        lease: None,
    }
}

/// (staged_seq, durable_seq).
fn publication(l: &Ledger) -> (i64, i64) {
    let c = Connection::open(l.path()).unwrap();
    c.query_row("SELECT staged_seq, durable_seq FROM publication", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
}

/// What another process that died between its COMMIT and its sync leaves behind: tasks
/// staged under a sequence that was never published.
fn stage_behind_the_ledgers_back(l: &Ledger, run: &str) -> i64 {
    let c = Connection::open(l.path()).unwrap();
    c.execute_batch("UPDATE publication SET staged_seq = staged_seq + 7").unwrap();
    c.execute(
        "UPDATE tasks SET pub_seq = (SELECT staged_seq FROM publication) WHERE run_num = (SELECT num FROM runs WHERE id = ?1) AND status = 'queued'",
        [run],
    )
    .unwrap();
    c.query_row("SELECT staged_seq FROM publication", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_staged_then_published_by_the_next_transaction() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(1, 4)).await;
    let (staged, durable) = publication(l);
    assert!(staged >= 1, "the fan-out staged its tasks");
    assert_eq!(l.query_i64("SELECT MAX(pub_seq) FROM tasks").await.unwrap(), staged);
    assert_eq!(l.append_tasks(&run, vec![spec("more")]).await.unwrap(), 1);
    let (staged2, _) = publication(l);
    assert!(staged2 > staged, "an append stages under a new sequence");
    // The append was answered once synced; the next transaction publishes it.
    assert!(durable <= staged2);
    l.claim_task("w", LONG_LEASE).await.unwrap().expect("a task");
    let (staged3, durable3) = publication(l);
    assert_eq!((staged3, durable3), (staged2, staged2), "published with the claim's transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_an_unpublished_task_waits_for_a_sync_and_publishes_it() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(2, 4)).await;
    // Let the ledger publish what it staged, then stage the queued tasks again behind its back.
    l.claim_task("w", LONG_LEASE).await.unwrap().expect("first task");
    let seq = stage_behind_the_ledgers_back(l, &run);
    let (syncs, _) = l.sync_stats();
    let task = l.claim_task("w", LONG_LEASE).await.unwrap().expect("second task");
    assert!(l.sync_stats().0 > syncs, "the claim of an unpublished task waited for a sync");
    // The sync made the sequence durable: the next transaction publishes it.
    l.heartbeat(&task, "w", LONG_LEASE).await.unwrap();
    assert_eq!(publication(l), (seq, seq));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_of_a_published_task_waits_for_no_sync() {
    let t = TestLedger::new();
    let l = &t.ledger;
    executing_run(l, "p", shell_plan(2, 4)).await;
    l.claim_task("w", LONG_LEASE).await.unwrap().expect("first task");
    let (staged, durable) = publication(l);
    assert_eq!(staged, durable, "the first claim published the fan-out");
    let (syncs, _) = l.sync_stats();
    l.claim_task("w", LONG_LEASE).await.unwrap().expect("second task");
    assert_eq!(l.sync_stats().0, syncs, "a published task is handed out at COMMIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_the_ledger_publishes_what_a_dead_process_left_staged() {
    let t = TestLedger::new();
    let (_, run) = executing_run(&t.ledger, "p", shell_plan(2, 4)).await;
    let seq = stage_behind_the_ledgers_back(&t.ledger, &run);
    assert!(publication(&t.ledger).1 < seq);
    let t = t.reopen();
    assert_eq!(publication(&t.ledger), (seq, seq), "synced and published at open");
    let (syncs, _) = t.ledger.sync_stats();
    t.ledger.claim_task("w", LONG_LEASE).await.unwrap().expect("a task");
    assert_eq!(t.ledger.sync_stats().0, syncs, "nothing left to sync for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_syncs_a_commit_publishes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &ManualClock::new(T0));
    o.durability = Durability::Normal;
    let l = Ledger::open(o).unwrap();
    let (_, run) = executing_run(&l, "p", shell_plan(1, 4)).await;
    l.append_tasks(&run, vec![spec("more")]).await.unwrap();
    let (staged, durable) = publication(&l);
    assert!(staged >= 2);
    assert_eq!(durable, staged);
    assert_eq!(l.sync_stats().0, 0);
}

/// `n` concurrent appends of two tasks each to `run` (client `i` adds `{prefix}-{i}` and
/// `{prefix}-{i}-b`, or client `dup_of`'s pair when it is `Some((i, dup_of))`); returns how
/// many succeeded and which clients got a conflict.
async fn append_concurrently(
    l: &Ledger,
    run: &str,
    prefix: &str,
    n: usize,
    dup: Option<(usize, usize)>,
) -> (usize, Vec<usize>) {
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..n {
        let (l, run) = (l.clone(), run.to_string());
        let name = match dup {
            Some((client, of)) if client == i => format!("{prefix}-{of}"),
            _ => format!("{prefix}-{i}"),
        };
        clients.spawn(async move { (i, l.append_tasks(&run, vec![spec(&name), spec(&format!("{name}-b"))]).await) });
    }
    let (mut ok, mut conflicts) = (0, Vec::new());
    while let Some(joined) = clients.join_next().await {
        match joined.unwrap() {
            (_, Ok(added)) => {
                assert_eq!(added, 2);
                ok += 1;
            }
            (i, Err(e)) => {
                assert_eq!(e.kind().as_str(), "conflict", "client {i}: {e}");
                conflicts.push(i);
            }
        }
    }
    (ok, conflicts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_run_merge_without_losing_or_doubling_a_task() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(1, 1000)).await;
    let appends = 200;
    assert_eq!(append_concurrently(l, &run, "job", appends, None).await, (appends, vec![]));
    let events = |l: &Ledger| {
        let (l, sql) =
            (l.clone(), format!("SELECT COUNT(*) FROM events WHERE run_id = '{run}' AND kind = 'tasks_queued'"));
        async move { l.query_i64(&sql).await.unwrap() }
    };
    let merged = events(l).await - 1;
    assert!(merged < appends as i64 / 2, "{merged} tasks_queued events for {appends} concurrent appends: not merged");

    // Client 7 repeats client 3's tasks: exactly one of the two gets a conflict, and the
    // others of a merged append that failed still get theirs in.
    let (ok, conflicts) = append_concurrently(l, &run, "dup", appends, Some((7, 3))).await;
    assert_eq!(ok, appends - 1);
    assert!(conflicts == vec![3] || conflicts == vec![7], "{conflicts:?}");

    let detail = l.run_detail(&run).await.unwrap();
    assert_eq!(detail.tasks.len(), 1 + 2 * (2 * appends - 1));
    let positions: Vec<i64> = detail.tasks.iter().map(|t| t.index as i64).collect();
    assert_eq!(positions, (0..positions.len() as i64).collect::<Vec<_>>(), "positions stay contiguous");
    // Each append's two tasks are adjacent: merged appends keep their clients' order.
    for pair in detail.tasks[1..].chunks(2) {
        assert_eq!(format!("{}-b", pair[0].spec.name), pair[1].spec.name);
    }
    let twice = "SELECT COUNT(*) FROM (SELECT 1 FROM tasks GROUP BY task_key HAVING COUNT(*) > 1)";
    assert_eq!(l.query_i64(twice).await.unwrap(), 0);
    let counted = format!(
        "SELECT SUM(json_extract(data, '$.count')) FROM events WHERE run_id = '{run}' AND kind = 'tasks_queued'"
    );
    assert_eq!(l.query_i64(&counted).await.unwrap() as usize, detail.tasks.len(), "every task counted once");
    assert_eq!(l.counter_drift().await.unwrap(), 0);
}
