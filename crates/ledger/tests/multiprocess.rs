//! No double claim across processes: four real child processes (this test
//! binary re-executed as claimers) drain one ledger file concurrently; every
//! task is claimed and committed exactly once.

mod common;

use common::*;
use machina_core::TaskStatus;
use machina_ledger::{Ledger, LedgerError, LedgerOptions};
use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;

/// Set in a child: the state directory to claim from.
const DIR_ENV: &str = "MACHINA_LEDGER_TEST_CLAIMER_DIR";
/// Set in a child: its lease owner name.
const OWNER_ENV: &str = "MACHINA_LEDGER_TEST_CLAIMER_OWNER";
/// Prefix of the line a child prints per committed task.
const CLAIMED: &str = "MACHINA-CLAIMED";
const CHILD_TEST: &str = "child_claimer";

const CHILDREN: usize = 4;
const RUNS: usize = 4;
const TASKS_PER_RUN: usize = 100;

/// Retry an operation the ledger refused only because another process held the lock.
async fn busy_retry<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    loop {
        match op().await {
            Ok(v) => return v,
            Err(LedgerError::Busy) => continue,
            Err(e) => panic!("ledger error in claimer: {e:?}"),
        }
    }
}

/// The claimer: does nothing unless the parent test started this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_claimer() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let owner = std::env::var(OWNER_ENV).expect("owner");
    let ledger = Ledger::open(LedgerOptions::new(dir)).unwrap_or_else(|e| panic!("open: {e}"));
    while let Some(t) = busy_retry(|| ledger.claim_task(&owner, LONG_LEASE)).await {
        let done = busy_retry(|| ledger.complete_task(ok_report(&t, &owner))).await;
        assert_eq!(done.task_status, TaskStatus::Succeeded);
        println!("\n{CLAIMED} {} {}", t.task_id, t.task_key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_claim_a_task_twice() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let mut runs = Vec::new();
    for r in 0..RUNS {
        let (_, run) =
            executing_run(l, &format!("part-{}", r % 2), shell_plan(TASKS_PER_RUN, TASKS_PER_RUN as u32)).await;
        runs.push(run);
    }
    let all: BTreeSet<i64> = {
        let db = raw(l);
        let mut st = db.prepare("SELECT id FROM tasks WHERE status = 'queued'").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(all.len(), RUNS * TASKS_PER_RUN);

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            let child = tokio::process::Command::new(&exe)
                .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
                .env(DIR_ENV, t.dir.path())
                .env(OWNER_ENV, format!("proc-{i}"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn claimer");
            tokio::spawn(child.wait_with_output())
        })
        .collect();

    let mut claimed_by: HashMap<i64, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for (i, h) in children.into_iter().enumerate() {
        let out = h.await.unwrap().expect("claimer output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "claimer {i} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "claimer {i} did not run its test:\n{stdout}");
        for line in stdout.lines() {
            let Some(rest) = line.find(CLAIMED).map(|p| &line[p + CLAIMED.len()..]) else {
                continue;
            };
            let id: i64 = rest.split_whitespace().next().and_then(|s| s.parse().ok()).expect(line);
            if let Some(prev) = claimed_by.insert(id, i) {
                duplicates.push((id, prev, i));
            }
        }
    }
    let mut per_child = [0usize; CHILDREN];
    claimed_by.values().for_each(|i| per_child[*i] += 1);
    eprintln!("tasks committed per claimer: {per_child:?}");
    assert!(duplicates.is_empty(), "tasks committed by two claimers (task, first, second): {duplicates:?}");
    let union: BTreeSet<i64> = claimed_by.keys().copied().collect();
    assert_eq!(union, all, "every task is claimed by some process");

    let n = (RUNS * TASKS_PER_RUN) as i64;
    assert_eq!(count(l, "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded' AND attempt = 1").await, n);
    assert_eq!(count(l, "SELECT COUNT(*) FROM attempts").await, n);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts").await, n);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts WHERE seen > 1").await, 0);
    assert_eq!(l.counter_drift().await.unwrap(), 0, "run counters match the tasks after concurrent processes");
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs WHERE status = 'succeeded'").await, RUNS as i64);
    assert_eq!(count(l, "SELECT COALESCE(SUM(leased_tasks), 0) FROM runs").await, 0);
    for run in &runs {
        let events = l.events(run, 0, 100_000).await.unwrap();
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "run {run}: gapless events");
    }
}
