//! Benchmark of machina's ledger, measured the same way as the peers in bench/peers.
//!
//! Phase 1 (durable enqueue): `--submitters` tokio tasks add `--jobs` no-op tasks in total to
//! one executing run (`--tasks-per-append`, default 1, per call), each `append_tasks`
//! awaited on its own; it returns only after the group
//! commit that holds it is on disk (WAL; the ledger's sync thread fdatasyncs it, the same
//! guarantee as `synchronous=FULL`).
//! Phase 2 (processing): `--consumers` tokio tasks each loop claim → (no-op) → complete, the
//! way a worker does: a completion commits together with the claim of the consumer's next
//! task (`complete_and_claim`), which hands back that next task at COMMIT and the completion
//! once durable. A claim is a leased, fenced task; a completion writes the attempt row, the
//! receipt, the event and settles the run. A job counts once its completion is durable;
//! latency is claim returned → completion durable.
//!
//! Prints exactly one JSON line on stdout; progress goes to stderr.

// As machina-api and machina-worker do (src/bin).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use machina_core::{Plan, TaskSpec};
use machina_ledger::{CompiledPlan, Ledger, LedgerOptions, NewIntent, NewRun, Submission, TaskReport, Work};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Args {
    enqueue_only: bool,
    /// Keep the ledger's directory afterwards (printed), to inspect what the run wrote.
    keep: bool,
    jobs: usize,
    /// Tasks each append adds (the peers' harnesses add one job per call; 1 compares alike).
    tasks_per_append: usize,
    consumers: usize,
    submitters: usize,
}

fn parse_args() -> Args {
    let mut a =
        Args { enqueue_only: false, keep: false, jobs: 100_000, tasks_per_append: 1, consumers: 4, submitters: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--enqueue-only" || flag == "--keep" {
            a.enqueue_only |= flag == "--enqueue-only";
            a.keep |= flag == "--keep";
            continue;
        }
        let val: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--jobs" => a.jobs = val,
            "--consumers" => a.consumers = val.max(1),
            "--submitters" => a.submitters = val.max(1),
            "--tasks-per-append" => a.tasks_per_append = val.max(1),
            _ => panic!(
                "unknown flag {flag} (use --jobs --consumers --submitters --tasks-per-append --enqueue-only --keep)"
            ),
        }
    }
    a
}

fn noop(name: String) -> TaskSpec {
    TaskSpec { name, tool: "shell".into(), argv: vec!["/usr/bin/true".into()], timeout_secs: 10, lease: None }
}

/// One executing run to hold the benchmark's tasks (its seed task is processed with them).
async fn executing_run(ledger: &Ledger) -> String {
    let intent = NewIntent { goal: "bench".into(), inputs: json!({}), constraints: json!({}) };
    let run = NewRun {
        intent_id: String::new(),
        recipe: "bench".into(),
        partition_key: "bench".into(),
        workload: json!({}),
        concurrency: 1_000_000,
    };
    ledger.submit(None, Submission::Enqueue(intent, run)).await.unwrap();
    let job = ledger.claim_compile("setup", 60_000).await.unwrap().unwrap();
    let plan = Plan { recipe: "bench".into(), concurrency: 1_000_000, tasks: vec![noop("seed".into())] };
    let sha = ledger.put_artifact(plan.canonical_bytes(), "application/json").await.unwrap();
    let compiled = CompiledPlan { plan, plan_sha256: sha, approval_required: false };
    ledger.finish_compile(&job, "setup", Ok(compiled)).await.unwrap();
    job.run.id
}

fn report(task_id: i64, owner: &str, attempt: u32) -> TaskReport {
    TaskReport {
        task_id,
        owner: owner.into(),
        attempt,
        err_code: None,
        exit_status: Some(0),
        stdout_sha256: None,
        stderr_sha256: None,
        wall_ms: 0,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64
}

/// CPU time so far of this process's thread named `name` (Linux schedstat), in nanoseconds.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task").ok()?.flatten().find_map(|t| {
        let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(())?;
        std::fs::read_to_string(t.path().join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
    })
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let mut dir = tempfile::tempdir().unwrap();
    if args.keep {
        dir.disable_cleanup(true);
        eprintln!("machina: ledger kept in {}", dir.path().display());
    }
    let ledger = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
    let pragmas = ledger.pragmas();
    assert_eq!(pragmas.journal_mode, "wal");
    assert!(pragmas.durable_commits, "durability must be FULL: every acknowledged commit fsynced");
    let run = executing_run(&ledger).await;

    let next = Arc::new(AtomicUsize::new(0));
    let writer_cpu_before = thread_cpu_ns("ledger-writer");
    let t0 = Instant::now();
    let mut subs = Vec::new();
    let per = args.tasks_per_append;
    for _ in 0..args.submitters {
        let (ledger, run, next, n) = (ledger.clone(), run.clone(), next.clone(), args.jobs);
        subs.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per, Ordering::Relaxed);
                if first >= n {
                    break;
                }
                let specs = (first..n.min(first + per)).map(|i| noop(format!("job-{i}"))).collect();
                ledger.append_tasks(&run, specs).await.unwrap();
            }
        }));
    }
    for s in subs {
        s.await.unwrap();
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    let (txns, ops) = ledger.writer_stats();
    eprintln!("machina: enqueue group commits: {txns} transactions, {:.1} operations each", ops as f64 / txns as f64);
    let (syncs, sync_us) = ledger.sync_stats();
    eprintln!("machina: enqueue syncs: {syncs}, {:.0} us each", sync_us as f64 / syncs.max(1) as f64);
    let wal_mib = |d: &std::path::Path| std::fs::metadata(d.join("ledger.db-wal")).map_or(0, |m| m.len()) >> 20;
    eprintln!("machina: WAL after enqueue: {} MiB", wal_mib(dir.path()));
    eprintln!("machina: enqueued {} in {enqueue_s:.2}s ({:.0}/s)", args.jobs, args.jobs as f64 / enqueue_s);
    if let (Some(before), Some(ns)) = (writer_cpu_before, thread_cpu_ns("ledger-writer")) {
        let ns = ns.saturating_sub(before);
        eprintln!("machina: writer thread CPU during enqueue: {:.2} us per job", ns as f64 / 1000.0 / args.jobs as f64);
    }
    if args.enqueue_only {
        let line = json!({
            "system": "machina",
            "phase": "enqueue",
            "jobs": args.jobs,
            "submitters": args.submitters,
            "tasks_per_append": per,
            "enqueue_jobs_per_s": args.jobs as f64 / enqueue_s,
        });
        println!("{line}");
        return;
    }

    let t1 = Instant::now();
    let mut consumers = Vec::new();
    for c in 0..args.consumers {
        let ledger = ledger.clone();
        consumers.push(tokio::spawn(async move {
            let owner = format!("consumer-{c}");
            // Like a worker: the next task arrives with the commit of this one's completion
            // and starts while the disk confirms that completion; a job is done once durable.
            let mut settling = tokio::task::JoinSet::new();
            let mut next = ledger.claim_task(&owner, 60_000).await.unwrap();
            while let Some(t) = next {
                let claimed = Instant::now();
                let (following, done) =
                    ledger.complete_and_claim(report(t.task_id, &owner, t.attempt), 60_000).await.unwrap();
                settling.spawn(async move {
                    done.await.expect("completion durable");
                    claimed.elapsed().as_micros() as u64
                });
                next = match following {
                    Some(Work::Task(t)) => Some(t),
                    Some(Work::Compile(_)) => unreachable!("no queued runs in this benchmark"),
                    None => None,
                };
            }
            settling.join_all().await
        }));
    }
    let mut lat = Vec::new();
    for c in consumers {
        lat.extend(c.await.unwrap());
    }
    let process_s = t1.elapsed().as_secs_f64();
    let (txns2, ops2) = ledger.writer_stats();
    eprintln!(
        "machina: processing group commits: {} transactions, {:.1} operations each",
        txns2 - txns,
        (ops2 - ops) as f64 / (txns2 - txns) as f64
    );
    let done = ledger.query_i64("SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'").await.unwrap();
    assert_eq!(done as usize, args.jobs + 1, "every task committed");
    assert_eq!(ledger.query_i64("SELECT COUNT(*) FROM receipts WHERE seen > 1").await.unwrap(), 0);
    assert_eq!(lat.len(), args.jobs + 1);
    lat.sort_unstable();
    let (syncs2, sync_us2) = ledger.sync_stats();
    eprintln!(
        "machina: processing syncs: {}, {:.0} us each",
        syncs2 - syncs,
        (sync_us2 - sync_us) as f64 / (syncs2 - syncs).max(1) as f64
    );
    eprintln!("machina: WAL after processing: {} MiB", wal_mib(dir.path()));
    eprintln!("machina: processed {} in {process_s:.2}s", args.jobs);
    let line = json!({
        "system": "machina",
        "jobs": args.jobs,
        "enqueue_jobs_per_s": args.jobs as f64 / enqueue_s,
        "process_jobs_per_s": args.jobs as f64 / process_s,
        "latency_p50_us": percentile(&lat, 0.50),
        "latency_p99_us": percentile(&lat, 0.99),
        "durability": "every acknowledged commit fdatasynced first (the ledger's sync thread; SQLite synchronous=NORMAL underneath)",
        "notes": format!(
            "ledger level, group commit; {} submitters ({} task(s) per append), {} consumers in one process",
            args.submitters, per, args.consumers
        ),
    });
    println!("{line}");
}
