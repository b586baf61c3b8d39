//! Peer benchmark: `apalis` 1.0 with its SQLite backend (`apalis-sqlite`), for comparison with
//! machina.
//!
//! Phase 1 (durable enqueue): `--submitters` tokio tasks push `--jobs` no-op tasks in total with
//! `TaskSink::push`, each push awaited on its own. apalis-sqlite runs every push as its own
//! `BEGIN; INSERT; COMMIT`, so a job counts once its commit is done. No worker runs yet.
//!
//! Phase 2 (processing): `--consumers` apalis workers (`concurrency(1)` each, default fetch batch
//! of 10) run the tasks. The handler only records its entry time. apalis reports completions
//! to the database on its own: the worker sends an ack event through a channel and later
//! commits a batch of acks (`UPDATE Jobs SET status='Done' ...`). No callback marks that commit,
//! so the completion time of each task is observed with two sqlx hooks. A SQLite update hook
//! on every pooled connection notes which `Jobs` rows the current transaction touches. sqlx's
//! `after_release` hook stamps those rows when the connection comes back to the pool after
//! `COMMIT`. A row's last stamp is its Done commit. Latency = handler entry -> that stamp. The
//! phase ends once `SELECT COUNT(*) FROM Jobs WHERE status='Done'` (polled every 1 ms after the
//! N-th handler ran) reaches N.
//!
//! Durability: every pooled connection is opened with `journal_mode=WAL` and `synchronous=FULL`
//! (sqlx `SqliteConnectOptions`), and both are read back on every pool connection before phase 1
//! and after phase 2. `SqliteStorage::setup()` is NOT called, because it runs
//! `PRAGMA synchronous=OFF`. Its migrations are run instead, and its other tuning pragmas are
//! applied through the connect options.
//!
//! Prints exactly one JSON line on stdout; everything else goes to stderr.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteStorage};
use sqlx::sqlite::{SqliteJournalMode, SqliteOperation, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::Notify;

struct Args {
    jobs: usize,
    consumers: usize,
    submitters: usize,
    /// Stop after phase 1 (the enqueue sweep of bench/sweep.sh).
    enqueue_only: bool,
    db: String,
}

fn parse_args() -> Args {
    let tmp = std::env::temp_dir().join("peer-apalis.sqlite");
    let mut a =
        Args { jobs: 100_000, consumers: 4, submitters: 64, enqueue_only: false, db: tmp.display().to_string() };
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
            "--db" => a.db = val.clone(),
            _ => panic!("unknown flag {flag} (use --jobs --consumers --submitters --db --enqueue-only)"),
        }
    }
    a
}

// ---- completion-commit observation (update hook + after_release) ----

type RowBuf = Arc<Mutex<Vec<i64>>>;
/// Per-connection list of `Jobs` rowids updated since the connection was last released.
static TOUCHED: LazyLock<Mutex<HashMap<usize, RowBuf>>> = LazyLock::new(Default::default);
/// (rowid, time the connection that updated it was released after its COMMIT).
static COMMITS: Mutex<Vec<(i64, Instant)>> = Mutex::new(Vec::new());

async fn open_pool(db: &str) -> Result<SqlitePool, sqlx::Error> {
    let opts = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        // the rest of what SqliteStorage::setup() would set (minus synchronous=OFF)
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "64000")
        .pragma("journal_size_limit", "67108864")
        // sqlx's default 5 s is not enough under this load: a worker gets SQLITE_BUSY in fetch_next,
        // dies, and its tasks sit until orphan recovery (60 s), so we wait longer for the lock.
        .busy_timeout(Duration::from_secs(60));
    SqlitePoolOptions::new()
        .after_connect(|conn, _| {
            Box::pin(async move {
                let mut h = conn.lock_handle().await?;
                let buf = RowBuf::default();
                TOUCHED.lock().unwrap().insert(h.as_raw_handle().as_ptr() as usize, buf.clone());
                h.set_update_hook(move |ev| {
                    if ev.table == "Jobs" && matches!(ev.operation, SqliteOperation::Update) {
                        buf.lock().unwrap().push(ev.rowid);
                    }
                });
                Ok(())
            })
        })
        .after_release(|conn, _| {
            Box::pin(async move {
                let key = conn.lock_handle().await?.as_raw_handle().as_ptr() as usize;
                let buf = TOUCHED.lock().unwrap().get(&key).cloned();
                let rows = buf.map(|b| std::mem::take(&mut *b.lock().unwrap())).unwrap_or_default();
                if !rows.is_empty() {
                    let now = Instant::now();
                    COMMITS.lock().unwrap().extend(rows.into_iter().map(|r| (r, now)));
                }
                Ok(true)
            })
        })
        .connect_with(opts)
        .await
}

/// Holds every pool connection at once and reads back journal_mode and synchronous on each.
async fn durability_readback(pool: &SqlitePool) -> Result<(usize, usize), sqlx::Error> {
    let mut conns = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        conns.push(pool.acquire().await?);
    }
    let mut ok = 0;
    for c in conns.iter_mut() {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut **c).await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&mut **c).await?;
        ok += usize::from(mode.eq_ignore_ascii_case("wal") && sync == 2);
    }
    Ok((ok, conns.len()))
}

// ---- phase 2 handler ----

#[derive(Debug, Default)]
struct Ctx {
    entries: Mutex<Vec<(String, Instant)>>,
    handled: AtomicUsize,
    target: usize,
    all_handled: Notify,
}

async fn noop(_n: u64, id: TaskId, ctx: Data<Arc<Ctx>>) -> Result<(), BoxDynError> {
    ctx.entries.lock().unwrap().push((id.to_string(), Instant::now()));
    if ctx.handled.fetch_add(1, Ordering::AcqRel) + 1 == ctx.target {
        ctx.all_handled.notify_one();
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
        let _ = std::fs::remove_file(format!("{}{suffix}", args.db));
    }
    let pool = open_pool(&args.db).await?;
    SqliteStorage::migrations().run(&pool).await?;
    let (ok_before, total) = durability_readback(&pool).await?;
    eprintln!("apalis: db={} WAL+FULL on {ok_before}/{total} pool connections", args.db);
    let storage = SqliteStorage::<u64>::new(&pool);

    // Phase 1: durable enqueue, S submitters, every push awaited on its own.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..args.submitters {
        let share = n / args.submitters + usize::from(s < n % args.submitters);
        let mut sink = storage.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..share {
                sink.push(i as u64).await?;
            }
            Ok::<_, TaskSinkError<apalis_sqlite::Error>>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    eprintln!("apalis: enqueued {n} jobs in {enqueue_s:.3}s");
    if args.enqueue_only {
        let line = serde_json::json!({
            "system": "apalis",
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
    COMMITS.lock().unwrap().clear();
    let t1 = Instant::now();
    for i in 0..args.consumers {
        let worker = WorkerBuilder::new(format!("bench-worker-{i}"))
            .backend(storage.clone())
            .concurrency(1)
            .data(ctx.clone())
            .build(noop);
        tokio::spawn(async move {
            if let Err(e) = worker.run().await {
                eprintln!("apalis: worker {i} stopped: {e}");
            }
        });
    }
    if n > 0 {
        ctx.all_handled.notified().await;
    }
    eprintln!("apalis: all {n} handlers ran after {:.3}s", t1.elapsed().as_secs_f64());
    // Every handler has run; wait until apalis has committed all N acks (status Done).
    let poll_opts = SqliteConnectOptions::new().filename(&args.db);
    let mut poll_conn = SqliteConnection::connect_with(&poll_opts).await?;
    let done_sql = "SELECT COUNT(*) FROM Jobs WHERE status = 'Done'";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar(done_sql).fetch_one(&mut poll_conn).await?;
        if done as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {done}/{n} jobs Done after 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let process_s = t1.elapsed().as_secs_f64();
    eprintln!("apalis: processed {n} jobs in {process_s:.3}s");

    // Latency: handler entry -> last commit stamp of the job's row (its Done ack).
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT rowid, id FROM Jobs").fetch_all(&mut poll_conn).await?;
    let rowid_of: HashMap<String, i64> = rows.into_iter().map(|(r, id)| (id, r)).collect();
    let mut last_commit: HashMap<i64, Instant> = HashMap::new();
    for (rowid, t) in COMMITS.lock().unwrap().iter() {
        last_commit.insert(*rowid, *t);
    }
    let entries = std::mem::take(&mut *ctx.entries.lock().unwrap());
    let mut lat: Vec<f64> = entries
        .iter()
        .filter_map(|(id, entered)| {
            let done = last_commit.get(rowid_of.get(id)?)?;
            Some(done.saturating_duration_since(*entered).as_secs_f64() * 1e6)
        })
        .collect();
    let unmatched = entries.len() - lat.len();
    lat.sort_by(f64::total_cmp);

    let (ok_after, _) = durability_readback(&pool).await?;
    if ok_before != total || ok_after != total {
        return Err(format!("durability check failed: {ok_before}/{ok_after} of {total}").into());
    }
    let notes = format!(
        "WAL + synchronous=FULL via sqlx SqliteConnectOptions on every pool connection, read back \
         on all {total} pool connections before phase 1 and after phase 2 (all wal/FULL). \
         SqliteStorage::setup() not called (it sets PRAGMA synchronous=OFF); its migrations and \
         other pragmas applied instead. Pool = sqlx default {total} connections; busy_timeout \
         raised from sqlx's 5 s to 60 s because with 5 s a worker got SQLITE_BUSY in fetch_next, \
         died, and its tasks waited 60 s for orphan recovery. Enqueue = TaskSink::push, one INSERT transaction per job. Consumers = {} workers \
         with concurrency(1), fetch batch 10. Latency approximation: handler entry to the release \
         of the pooled connection whose COMMIT set the job Done (SQLite update hook + sqlx \
         after_release, i.e. ack commit plus one task hop); acks are sent by apalis through a \
         channel and committed in batches; {unmatched} jobs unmatched. End of phase 2 = poll (1 \
         ms) sees N rows status='Done'.",
        args.consumers
    );
    let line = serde_json::json!({
        "system": "apalis",
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
