//! Peer benchmark: the `effectum` SQLite job queue, for comparison with machina.
//!
//! Phase 1 (durable enqueue): `--submitters` tokio tasks add `--jobs` no-op jobs in total, each
//! `Job::add_to` awaited on its own. effectum sends every write to one writer thread, which
//! group-commits up to 50 queued operations per transaction and answers each caller only after
//! that transaction has committed, so a job counts once its commit is done. No worker runs yet.
//!
//! Phase 2 (processing): `--consumers` effectum `Worker`s (max_concurrency 1 each) run the jobs.
//! The handler takes a timestamp on entry (the job has just been claimed), then calls
//! `job.complete()`. That is the same call effectum's runner makes after a handler returns, and
//! it returns only after the writer thread has committed the completion. Latency is the time
//! between the two points. The phase ends when the N-th completion has committed. The count is
//! then checked in the database (no active jobs left; N rows with status `succeeded`).
//!
//! Durability: effectum 0.7 hard-codes `PRAGMA synchronous=normal` and has no option to change
//! it. It also writes `PRAGMA journal=wal`, which is not a real pragma, so it never turns on WAL
//! itself. This binary registers a SQLite auto-extension (same bundled libsqlite3 as effectum).
//! On every connection the process opens, it sets `journal_mode=WAL` and `synchronous=FULL`,
//! reads both back, and installs an authorizer that turns later `PRAGMA synchronous=...` writes
//! (effectum's NORMAL) into no-ops.
//!
//! Prints exactly one JSON line on stdout; everything else goes to stderr.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use effectum::{Job, JobRunner, Queue, RunningJob, Worker};
use rusqlite::{Connection, ffi};
use tokio::sync::Notify;

const JOB_TYPE: &str = "noop";

struct Args {
    jobs: usize,
    consumers: usize,
    submitters: usize,
    /// Stop after phase 1 (the enqueue sweep of bench/sweep.sh).
    enqueue_only: bool,
    db: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        jobs: 100_000,
        consumers: 4,
        submitters: 64,
        enqueue_only: false,
        db: std::env::temp_dir().join("peer-effectum.sqlite"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--enqueue-only" {
            a.enqueue_only = true;
            continue;
        }
        let val = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || val.parse::<usize>().unwrap_or_else(|_| panic!("bad value for {flag}"));
        match flag.as_str() {
            "--jobs" => a.jobs = num(),
            "--consumers" => a.consumers = num().max(1),
            "--submitters" => a.submitters = num().max(1),
            "--db" => a.db = PathBuf::from(&val),
            _ => panic!("unknown flag {flag} (use --jobs --consumers --submitters --db --enqueue-only)"),
        }
    }
    a
}

// ---- durability: WAL + synchronous=FULL on every SQLite connection of this process ----

/// Connections whose journal_mode=wal and synchronous=2 (FULL) were read back at open.
static CONNS_FULL: AtomicUsize = AtomicUsize::new(0);
/// Connections that failed that check.
static CONNS_NOT_FULL: AtomicUsize = AtomicUsize::new(0);
/// `PRAGMA synchronous=...` writes (by effectum) that the authorizer turned into no-ops.
static SYNC_PRAGMAS_IGNORED: AtomicUsize = AtomicUsize::new(0);

unsafe extern "C" fn deny_synchronous_change(
    _: *mut c_void,
    action: c_int,
    arg1: *const c_char,
    arg2: *const c_char,
    _: *const c_char,
    _: *const c_char,
) -> c_int {
    if action == ffi::SQLITE_PRAGMA && !arg1.is_null() && !arg2.is_null() {
        // SAFETY: SQLite passes NUL-terminated strings valid for the duration of the call.
        let name = unsafe { CStr::from_ptr(arg1) }.to_string_lossy();
        if name.eq_ignore_ascii_case("synchronous") {
            SYNC_PRAGMAS_IGNORED.fetch_add(1, Ordering::Relaxed);
            return ffi::SQLITE_IGNORE; // the PRAGMA statement becomes a no-op
        }
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn on_connection_open(
    db: *mut ffi::sqlite3,
    _err: *mut *const c_char,
    _api: *const ffi::sqlite3_api_routines,
) -> c_int {
    let check = || -> rusqlite::Result<bool> {
        // SAFETY: `db` is a live handle; a non-owning Connection does not close it on drop.
        let conn = unsafe { Connection::from_handle(db) }?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let sync: i64 = conn.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        Ok(mode.eq_ignore_ascii_case("wal") && sync == 2)
    };
    let ok = matches!(check(), Ok(true));
    let counter = if ok { &CONNS_FULL } else { &CONNS_NOT_FULL };
    counter.fetch_add(1, Ordering::Relaxed);
    // SAFETY: installing an authorizer on a live handle; the callback has no user data.
    unsafe { ffi::sqlite3_set_authorizer(db, Some(deny_synchronous_change), std::ptr::null_mut()) };
    ffi::SQLITE_OK
}

// ---- phase 2 handler ----

#[derive(Debug, Default)]
struct Ctx {
    /// Handler entry -> completion committed, in microseconds.
    latencies_us: Mutex<Vec<f64>>,
    completed: AtomicUsize,
    target: usize,
    all_done: Notify,
}

async fn noop_job(job: RunningJob, ctx: Arc<Ctx>) -> Result<(), effectum::Error> {
    let claimed = Instant::now();
    job.complete(()).await?; // returns after the completion's transaction has committed
    let us = claimed.elapsed().as_secs_f64() * 1e6;
    ctx.latencies_us.lock().unwrap().push(us);
    if ctx.completed.fetch_add(1, Ordering::AcqRel) + 1 == ctx.target {
        ctx.all_done.notify_one();
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let n = args.jobs;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", args.db.display()));
    }

    // SAFETY: registers a process-wide hook; must happen before any connection is opened.
    unsafe { ffi::sqlite3_auto_extension(Some(on_connection_open)) };
    // Create the file ourselves first so it is in WAL mode (persistent) before effectum opens it.
    let check_conn = Connection::open(&args.db)?;
    let queue = Arc::new(Queue::new(&args.db).await?);
    eprintln!(
        "effectum: db={} conns_full={} pragma_synchronous_ignored={}",
        args.db.display(),
        CONNS_FULL.load(Ordering::Relaxed),
        SYNC_PRAGMAS_IGNORED.load(Ordering::Relaxed)
    );

    // Phase 1: durable enqueue, S submitters, every add awaited on its own.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..args.submitters {
        let share = n / args.submitters + usize::from(s < n % args.submitters);
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                Job::builder(JOB_TYPE).add_to(&queue).await?;
            }
            Ok::<_, effectum::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    eprintln!("effectum: enqueued {n} jobs in {enqueue_s:.3}s");
    if args.enqueue_only {
        queue.close(Duration::from_secs(10)).await?;
        let line = serde_json::json!({
            "system": "effectum",
            "phase": "enqueue",
            "jobs": n,
            "submitters": args.submitters,
            "enqueue_jobs_per_s": round1(n as f64 / enqueue_s),
        });
        println!("{line}");
        return Ok(());
    }

    // Phase 2: C workers process the N jobs.
    let ctx = Arc::new(Ctx { target: n, ..Default::default() });
    let runner = JobRunner::builder(JOB_TYPE, noop_job).build();
    let t1 = Instant::now();
    let mut workers: Vec<Worker> = Vec::new();
    for _ in 0..args.consumers {
        let w = Worker::builder(&queue, ctx.clone()).max_concurrency(1).jobs([runner.clone()]);
        workers.push(w.build().await?);
    }
    if n > 0 {
        ctx.all_done.notified().await;
    }
    let process_s = t1.elapsed().as_secs_f64();
    eprintln!("effectum: processed {n} jobs in {process_s:.3}s");

    // Confirm with the library and the database that every job is recorded as done.
    let active = queue.num_active_jobs().await?;
    let succeeded: i64 =
        check_conn.query_row("SELECT COUNT(*) FROM jobs WHERE status = 'succeeded'", [], |r| r.get(0))?;
    let journal: String = check_conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    if active.pending + active.running != 0 || succeeded as usize != n {
        return Err(format!(
            "not all done: pending={} running={} succeeded={succeeded}",
            active.pending, active.running
        )
        .into());
    }
    for w in workers {
        w.unregister(Some(Duration::from_secs(10))).await?;
    }
    queue.close(Duration::from_secs(10)).await?;

    let mut lat = std::mem::take(&mut *ctx.latencies_us.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let (full, not_full) = (CONNS_FULL.load(Ordering::Relaxed), CONNS_NOT_FULL.load(Ordering::Relaxed));
    if not_full > 0 || !journal.eq_ignore_ascii_case("wal") {
        return Err(format!("durability check failed: {not_full} connections not WAL+FULL, journal={journal}").into());
    }
    let notes = format!(
        "effectum 0.7 hard-codes PRAGMA synchronous=NORMAL and never enables WAL (it writes the \
         non-pragma 'journal'); forced journal_mode=WAL + synchronous=FULL on every connection \
         via sqlite3_auto_extension (read back on open: {full} connections WAL+FULL, 0 not) and an \
         authorizer that made effectum's {} PRAGMA synchronous writes no-ops. Enqueue = \
         Job::add_to, answered after its group commit (<=50 ops per transaction). Consumers = \
         {} Workers with max_concurrency=1. Latency = handler entry to job.complete() returning \
         (completion committed by effectum's writer thread): exact, no approximation. End of \
         phase 2 = N-th completion committed; then checked: 0 active jobs, {succeeded} rows \
         'succeeded'.",
        SYNC_PRAGMAS_IGNORED.load(Ordering::Relaxed),
        args.consumers
    );
    let line = serde_json::json!({
        "system": "effectum",
        "jobs": n,
        "enqueue_jobs_per_s": round1(n as f64 / enqueue_s),
        "process_jobs_per_s": round1(n as f64 / process_s),
        "latency_p50_us": round1(percentile(&lat, 50.0)),
        "latency_p99_us": round1(percentile(&lat, 99.0)),
        "durability": "synchronous=FULL",
        "notes": notes,
    });
    println!("{line}");
    Ok(())
}
