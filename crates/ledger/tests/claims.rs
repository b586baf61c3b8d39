//! Task claiming: exactly-once commits and fencing by owner and attempt,
//! lease expiry and reclaim on a manual clock, the retry policy (terminal
//! CMD_NONZERO, BOOT_FAIL with backoff up to max_attempts, operator retry with
//! a fresh budget), fairness across partitions, and the per-run concurrency cap.

mod common;

use common::*;
use machina_core::{ErrCode, RunStatus, Step, StepOutcome, TaskStatus};
use machina_ledger::Heartbeat;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_fenced_and_committed_exactly_once() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(2, 2)).await;

    let a = claim(l, "w1").await;
    assert_eq!(a.attempt, 1);
    assert_eq!(l.heartbeat(&a, "w1", LONG_LEASE).await.unwrap(), Heartbeat::Renewed);
    assert_stale(l.heartbeat(&a, "w2", LONG_LEASE).await);
    assert_stale(l.complete_task(ok_report(&a, "w2")).await);

    // w1 loses the lease, then claims the same task again: attempt 2 fences attempt 1.
    assert_eq!(l.reclaim(Some("w1")).await.unwrap(), 1);
    t.clock.advance_ms(120_000);
    let b = claim(l, "w1").await;
    assert_eq!((b.task_id, b.attempt), (a.task_id, 2));
    assert_stale(l.heartbeat(&a, "w1", LONG_LEASE).await);
    assert_stale(l.complete_task(ok_report(&a, "w1")).await);
    assert_stale(l.complete_task(ok_report(&b, "w2")).await);
    let done = l.complete_task(ok_report(&b, "w1")).await.unwrap();
    assert_eq!(done.task_status, TaskStatus::Succeeded);

    // A second completion of a committed task, even by its holder, is stale.
    assert_stale(l.complete_task(ok_report(&b, "w1")).await);
    assert_stale(l.complete_task(fail_report(&b, "w1", ErrCode::CmdNonzero)).await);
    assert_stale(l.heartbeat(&b, "w1", LONG_LEASE).await);
    assert_eq!(task(l, &run, 0).await.status, TaskStatus::Succeeded);

    let c = claim(l, "w3").await;
    assert_ne!(c.task_id, a.task_id, "a committed task is never leased again");
    assert_eq!(l.complete_task(ok_report(&c, "w3")).await.unwrap().run_status, RunStatus::Succeeded);
    assert!(l.claim_task("w1", LONG_LEASE).await.unwrap().is_none());

    // One attempts row per try; one receipt per committed task, each seen once.
    let tries = l.attempts(&a.task_key).await.unwrap();
    let summary: Vec<_> =
        tries.iter().map(|x| (x.attempt, x.owner.as_str(), x.outcome.as_str(), x.err_code.as_deref())).collect();
    assert_eq!(summary, vec![(1, "w1", "failed", Some("LEASE_LOST")), (2, "w1", "succeeded", None)]);
    assert_eq!(l.attempts(&c.task_key).await.unwrap().len(), 1);
    assert_eq!(count(l, "SELECT COUNT(*) FROM attempts").await, 3);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts").await, 2);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts WHERE seen > 1").await, 0);
    assert_eq!(l.stats().await.unwrap().duplicate_receipts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_reclaimed_and_retried_after_backoff() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(1, 1)).await;
    let old = l.claim_task("w1", 1_000).await.unwrap().unwrap();
    assert_eq!(old.lease_expires_at, T0 + 1_000);
    assert_eq!(l.reclaim(None).await.unwrap(), 0, "nothing has expired");

    t.clock.advance_ms(2_000);
    assert_eq!(l.reclaim(None).await.unwrap(), 1);
    assert_eq!(l.reclaim(None).await.unwrap(), 0, "reclaim is not repeated");
    let now = l.now_ms();
    let rec = task(l, &run, 0).await;
    assert_eq!(
        (rec.status, rec.lease_owner.as_deref(), rec.err_code.as_deref()),
        (TaskStatus::Queued, None, Some("LEASE_LOST"))
    );
    assert!(rec.not_before > now, "LEASE_LOST is retried with a backoff (not_before {} <= now {now})", rec.not_before);
    assert_eq!(l.run_detail(&run).await.unwrap().run.status, RunStatus::Executing);

    assert!(l.claim_task("w2", LONG_LEASE).await.unwrap().is_none(), "not claimable during backoff");
    assert_stale(l.complete_task(ok_report(&old, "w1")).await);
    assert_stale(l.heartbeat(&old, "w1", 1_000).await);

    t.clock.advance_ms(rec.not_before - now);
    let new = claim(l, "w2").await;
    assert_eq!((new.task_id, new.attempt), (old.task_id, 2));
    assert_stale(l.complete_task(ok_report(&old, "w1")).await);
    assert_eq!(l.complete_task(ok_report(&new, "w2")).await.unwrap().run_status, RunStatus::Succeeded);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts WHERE seen > 1").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_of_an_owner_takes_its_live_leases_only() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(2, 2)).await;
    let mine = claim(l, "w1").await;
    let theirs = claim(l, "w2").await;
    assert_eq!(l.reclaim(Some("w1")).await.unwrap(), 1);
    let rec = task(l, &run, 0).await;
    assert_eq!(rec.task_key, mine.task_key);
    assert_eq!((rec.status, rec.lease_owner), (TaskStatus::Queued, None));
    let other = task(l, &run, 1).await;
    assert_eq!((other.status, other.lease_owner.as_deref()), (TaskStatus::Leased, Some("w2")));
    assert_stale(l.heartbeat(&mine, "w1", LONG_LEASE).await);
    assert_eq!(l.heartbeat(&theirs, "w2", LONG_LEASE).await.unwrap(), Heartbeat::Renewed);
    assert_eq!(l.reclaim(Some("w1")).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_failure_fails_the_run_at_once() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(3, 1)).await;
    let c = claim(l, "w").await;
    let done = l.complete_task(fail_report(&c, "w", ErrCode::CmdNonzero)).await.unwrap();
    assert_eq!((done.task_status, done.run_status), (TaskStatus::Failed, RunStatus::Failed));
    let d = l.run_detail(&run).await.unwrap();
    assert_eq!(d.run.status, RunStatus::Failed);
    assert_eq!((d.run.err_code.as_deref(), d.run.next_action.as_deref()), (Some("CMD_NONZERO"), Some("RETRY")));
    let statuses: Vec<_> = d.tasks.iter().map(|t| t.status).collect();
    assert_eq!(statuses, vec![TaskStatus::Failed, TaskStatus::Canceled, TaskStatus::Canceled]);
    assert_eq!(d.tasks[0].exit_status, Some(1));
    let last = d.steps.last().unwrap();
    assert_eq!(
        (last.step, last.outcome, last.err_code.as_deref()),
        (Step::Execute, StepOutcome::Failed, Some("CMD_NONZERO"))
    );
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none());
    assert_eq!(l.attempts(&c.task_key).await.unwrap().len(), 1, "CMD_NONZERO is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failures_back_off_run_out_and_resume_under_the_same_run() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, run) = executing_run(l, "p", shell_plan(3, 3)).await;
    let (a, b, c) = (claim(l, "w").await, claim(l, "w").await, claim(l, "w").await);
    l.complete_task(ok_report(&a, "w")).await.unwrap();
    l.complete_task(ok_report(&b, "w")).await.unwrap();

    // Attempts 1 and 2 of task c fail with BOOT_FAIL: queued again, after a backoff.
    let mut held = c.clone();
    for attempt in 1..=2u32 {
        assert_eq!(held.attempt, attempt);
        let done = l.complete_task(fail_report(&held, "w", ErrCode::BootFail)).await.unwrap();
        assert_eq!((done.task_status, done.run_status), (TaskStatus::Queued, RunStatus::Executing));
        let now = l.now_ms();
        let not_before = task(l, &run, 2).await.not_before;
        assert!(not_before > now, "BOOT_FAIL retry is delayed");
        t.clock.advance_ms(not_before - now - 1);
        assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none(), "claimable before not_before");
        t.clock.advance_ms(1);
        held = claim(l, "w").await;
        assert_eq!(held.task_id, c.task_id);
    }
    // Attempt 3 is the last of max_attempts = 3.
    assert_eq!(held.attempt, 3);
    let done = l.complete_task(fail_report(&held, "w", ErrCode::BootFail)).await.unwrap();
    assert_eq!((done.task_status, done.run_status), (TaskStatus::Failed, RunStatus::RetriesExceeded));
    let d = l.run_detail(&run).await.unwrap();
    assert_eq!((d.run.err_code.as_deref(), d.run.next_action.as_deref()), (Some("BOOT_FAIL"), Some("REPAIR")));
    assert_eq!(l.attempts(&c.task_key).await.unwrap().len(), 3);
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none());

    // Operator retry: same run id, next generation, only the failed task runs again.
    let r = l.retry_run(&run).await.unwrap();
    assert_eq!((r.id.as_str(), r.status, r.generation), (run.as_str(), RunStatus::Executing, 1));
    assert_eq!((r.err_code, r.next_action), (None, None));
    let d = l.run_detail(&run).await.unwrap();
    let statuses: Vec<_> = d.tasks.iter().map(|t| (t.status, t.attempt)).collect();
    assert_eq!(statuses, vec![(TaskStatus::Succeeded, 1), (TaskStatus::Succeeded, 1), (TaskStatus::Queued, 3)]);

    // A fresh budget: BOOT_FAIL on attempt 4 is retried, not exhausted.
    let again = claim(l, "w").await;
    assert_eq!((again.task_id, again.attempt), (c.task_id, 4));
    let done = l.complete_task(fail_report(&again, "w", ErrCode::BootFail)).await.unwrap();
    assert_eq!((done.task_status, done.run_status), (TaskStatus::Queued, RunStatus::Executing));
    t.clock.advance_ms(120_000);
    let last = claim(l, "w").await;
    assert_eq!((last.task_id, last.attempt), (c.task_id, 5));
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none(), "succeeded tasks are not re-run");
    assert_eq!(l.complete_task(ok_report(&last, "w")).await.unwrap().run_status, RunStatus::Succeeded);

    assert_eq!(l.attempts(&a.task_key).await.unwrap().len(), 1);
    assert_eq!(l.attempts(&b.task_key).await.unwrap().len(), 1);
    assert_eq!(l.attempts(&c.task_key).await.unwrap().len(), 5);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts WHERE seen > 1").await, 0);
    assert_eq!(count(l, "SELECT COUNT(*) FROM receipts").await, 3);
    let steps: Vec<_> =
        l.run_detail(&run).await.unwrap().steps.iter().map(|s| (s.step, s.outcome, s.generation)).collect();
    assert_eq!(
        steps[steps.len() - 3..],
        [
            (Step::Execute, StepOutcome::Failed, 0),
            (Step::Execute, StepOutcome::Started, 1),
            (Step::Execute, StepOutcome::Succeeded, 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_late_partition_is_not_starved_by_a_huge_one() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, bulk) = executing_run(l, "a-bulk", shell_plan(10_000, 10_000)).await;
    assert_eq!(count(l, "SELECT COUNT(*) FROM tasks WHERE status = 'queued'").await, 10_000);
    for _ in 0..3 {
        assert_eq!(claim(l, "w").await.run_id, bulk);
    }

    let (_, late) = executing_run(l, "b-late", shell_plan(1, 1)).await;
    let first_two = [claim(l, "w").await.run_id, claim(l, "w").await.run_id];
    assert!(first_two.contains(&late), "the late partition's task must be among the next 2 claims: {first_two:?}");
    assert_eq!(count(l, "SELECT COUNT(*) FROM tasks WHERE status = 'queued'").await, 10_000 - 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_never_holds_more_leases_than_its_concurrency() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let (_, capped) = executing_run(l, "p", shell_plan(5, 2)).await;
    let first = claim(l, "w").await;
    claim(l, "w").await;
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none(), "third lease of a concurrency-2 run");

    let (_, other) = executing_run(l, "p", shell_plan(1, 1)).await;
    assert_eq!(claim(l, "w").await.run_id, other, "the cap does not block other runs");
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none());
    let leased = format!("SELECT COUNT(*) FROM task_list WHERE run_id = '{capped}' AND status = 'leased'");
    assert_eq!(count(l, &leased).await, 2);

    // Freeing a slot (commit, or reclaim of a lost lease) lets the run claim again, never past 2.
    l.complete_task(ok_report(&first, "w")).await.unwrap();
    assert_eq!(claim(l, "w").await.run_id, capped);
    assert!(l.claim_task("w", LONG_LEASE).await.unwrap().is_none());
    assert_eq!(count(l, &leased).await, 2);
    assert_eq!(l.reclaim(Some("w")).await.unwrap(), 3);
    t.clock.advance_ms(120_000);
    let mut seen = 0;
    while let Some(c) = l.claim_task("w2", LONG_LEASE).await.unwrap() {
        seen += 1;
        assert!(count(l, &leased).await <= 2, "over the cap after {seen} claims");
        if c.run_id == other {
            l.complete_task(ok_report(&c, "w2")).await.unwrap();
        }
    }
    assert_eq!(count(l, &leased).await, 2);
    assert_eq!(count(l, "SELECT MAX(leased_tasks) FROM runs").await, 2);
}
