//! Idle enqueue-to-start latency: how long after a client submits work an idle worker
//! starts it.
//!
//! For each mode, a fresh temp directory gets a configuration drop-in and a one-task
//! recipe (`approval_required = false`, `/usr/bin/true`), and real release processes are
//! started from `--bin-dir`: `machina-api` on loopback and one `machina-worker --id w1`.
//!
//! - `signal`: a private `dbus-daemon`; the API and the worker are on it, and the worker's
//!   fallback poll is 600 s, so only the TasksQueued signal can wake it.
//! - `poll`: no bus (`bus.address = "none"`) and `worker.poll_ms = 150` (the old design).
//!
//! Each measured run: wait `--settle-ms` (random in the range) so the worker is idle, take
//! t0, `POST /enqueue` over a fresh loopback TCP connection (raw HTTP/1.1; `--keep-alive`:
//! one connection for all requests), expect 202, then read the run's status from the
//! ledger file (read-only, every `--check-us`) until it leaves `queued` (t1: the worker's compile claim committed, the start of work) and
//! until it is `succeeded` (t2: compile, the task's claim, the task, its commit). The next
//! run starts only after this one finished, so the worker is idle each time.
//!
//! With `--diagnose`, each run is preceded (after its own idle pause) by a `GET` of an
//! unknown path, the HTTP floor with no ledger access; in signal mode the benchmark also
//! listens on the bus and reports when the API's TasksQueued and the worker's
//! RunStateChanged("compiling") reach a third client, to split t1 into submit, signal and
//! claim. Mode `ledger` times the ledger calls of the same path in process
//! (`--ledger-normal`: with `synchronous=NORMAL`, to see what the per-commit fsync costs).
//!
//! Prints a markdown table on stdout; progress goes to stderr. Every child process is
//! killed when its mode ends, when the benchmark panics (a guard's Drop), and on
//! SIGINT/SIGTERM/SIGHUP.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// The bearer token the benchmark's API accepts.
const TOKEN: &str = "wake-latency-bench-token-0123456789";
/// Name of the benchmark's recipe.
const RECIPE: &str = "wake-bench";
/// Fallback poll of the worker in signal mode: long enough that only the signal wakes it.
const SIGNAL_MODE_POLL_MS: u64 = 600_000;
/// The old design's poll interval.
const POLL_MODE_POLL_MS: u64 = 150;

/// Which wake-up path a mode measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// TasksQueued over a private D-Bus; the poll is out of reach.
    Signal,
    /// No bus; the worker polls every 150 ms.
    Poll,
    /// Diagnosis: the ledger calls of the critical path, in process, on an idle ledger.
    Ledger,
}

impl Mode {
    /// The mode's name on the command line and in the table.
    fn name(self) -> &'static str {
        match self {
            Mode::Signal => "signal",
            Mode::Poll => "poll",
            Mode::Ledger => "ledger",
        }
    }
}

/// Command line.
#[derive(Debug)]
struct Args {
    /// Modes to run, in order.
    modes: Vec<Mode>,
    /// Measured runs per mode.
    runs: usize,
    /// Unmeasured runs first (connections, caches, the worker's subscription).
    warmup: usize,
    /// Idle time before each submission, drawn uniformly from this range (ms).
    settle_ms: (u64, u64),
    /// Pause between two reads of the run's status (µs; 0 spins).
    check_us: u64,
    /// Extra measures: the HTTP floor, and (signal mode) the signals as a third bus client sees them.
    diagnose: bool,
    /// Where machina-api and machina-worker are.
    bin_dir: PathBuf,
    /// Give up on one run after this long.
    timeout: Duration,
    /// Submit over one kept-alive connection instead of a fresh one per request.
    keep_alive: bool,
    /// Mode ledger: open it with `synchronous=NORMAL` (no fsync per commit), as an experiment.
    ledger_normal: bool,
}

/// Command-line synopsis.
const USAGE: &str = "usage: wake-latency [--mode signal|poll|both|ledger|all] [--runs N] [--warmup N] \
[--settle-ms MIN-MAX] [--check-us N] [--diagnose] [--bin-dir DIR] [--timeout-s N] [--keep-alive] [--ledger-normal]";

/// Parse the command line (defaults: both modes, 200 runs, 10 warmup, 20-50 ms settle).
fn parse_args() -> Result<Args> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/release"));
    let mut a = Args {
        modes: vec![Mode::Signal, Mode::Poll],
        runs: 200,
        warmup: 10,
        settle_ms: (20, 50),
        check_us: 50,
        diagnose: false,
        bin_dir: exe_dir,
        timeout: Duration::from_secs(10),
        ledger_normal: false,
        keep_alive: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"));
        let number = |v: String| v.parse::<u64>().map_err(|_| anyhow!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--mode" => {
                a.modes = match value()?.as_str() {
                    "signal" => vec![Mode::Signal],
                    "poll" => vec![Mode::Poll],
                    "both" => vec![Mode::Signal, Mode::Poll],
                    "ledger" => vec![Mode::Ledger],
                    "all" => vec![Mode::Signal, Mode::Poll, Mode::Ledger],
                    other => bail!("--mode {other:?}: signal, poll, both, ledger or all"),
                }
            }
            "--runs" => a.runs = number(value()?)?.max(1) as usize,
            "--warmup" => a.warmup = number(value()?)? as usize,
            "--settle-ms" => {
                let v = value()?;
                a.settle_ms = match v.split_once('-') {
                    Some((lo, hi)) => (number(lo.into())?, number(hi.into())?),
                    None => (number(v.clone())?, number(v)?),
                };
                if a.settle_ms.0 > a.settle_ms.1 {
                    bail!("--settle-ms: MIN must not exceed MAX");
                }
            }
            "--check-us" => a.check_us = number(value()?)?,
            "--diagnose" => a.diagnose = true,
            "--ledger-normal" => a.ledger_normal = true,
            "--keep-alive" => a.keep_alive = true,
            "--bin-dir" => a.bin_dir = PathBuf::from(value()?),
            "--timeout-s" => a.timeout = Duration::from_secs(number(value()?)?.max(1)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    Ok(a)
}

mod http;
mod ledger_mode;
mod observer;
mod procs;

use http::*;
use ledger_mode::*;
use observer::*;
use procs::*;

// ---------------------------------------------------------------------------------------
// Measuring

/// One measured run, as offsets from t0 (just before connecting to submit).
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Run id.
    run_id: String,
    /// t0 itself, to match observed signals.
    t0: Option<Instant>,
    /// The 202 response fully read.
    submit: Duration,
    /// The run left `queued`: the compile claim committed.
    start: Duration,
    /// The run is `succeeded`.
    done: Duration,
    /// The API's TasksQueued reached the observer.
    signal: Option<Duration>,
    /// The worker's RunStateChanged("compiling") reached the observer.
    compiling_signal: Option<Duration>,
    /// `--diagnose`: an idle `GET` of an unknown path (connect, route, respond; no ledger).
    floor: Option<Duration>,
}

/// Small deterministic-enough PRNG for the settle times (xorshift64*).
struct Rng(u64);

impl Rng {
    /// Seeded from the clock.
    fn new() -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Self(seed | 1)
    }

    /// A value in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (hi - lo + 1)
    }
}

/// Submit one run and follow it to `succeeded`.
fn measure_one(client: &mut Client, ledger: &rusqlite::Connection, args: &Args, n: usize) -> Result<Sample> {
    let body = format!(r#"{{"goal":"wake {n}","recipe":"{RECIPE}","inputs":{{}}}}"#);
    let t0 = Instant::now();
    let (status, resp) = client.request("POST", "/enqueue", &body)?;
    let submit = t0.elapsed();
    if status != 202 {
        bail!("POST /enqueue: {status} {resp}");
    }
    let v: serde_json::Value = serde_json::from_str(&resp)?;
    let run_id = v["run"]["id"].as_str().ok_or_else(|| anyhow!("no run.id in {resp}"))?.to_string();
    let mut stmt = ledger.prepare_cached("SELECT status FROM runs WHERE id = ?1")?;
    let mut start = None;
    loop {
        let st: String = stmt.query_row([&run_id], |r| r.get(0))?;
        let now = Instant::now();
        if start.is_none() && st != "queued" {
            start = Some(now - t0);
        }
        match st.as_str() {
            "succeeded" => {
                return Ok(Sample {
                    run_id,
                    t0: Some(t0),
                    submit,
                    start: start.expect("set above"),
                    done: now - t0,
                    ..Sample::default()
                });
            }
            "failed" | "retries_exceeded" | "canceled" => bail!("run {run_id} ended {st}"),
            _ => {}
        }
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        if now - t0 > args.timeout {
            bail!("run {run_id} still {st} after {:?} (the worker was not woken?)", args.timeout);
        }
        if args.check_us == 0 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(args.check_us));
        }
    }
}

/// One measure of a mode: its name and its values.
type Measure = (&'static str, Vec<Duration>);

/// Measure `mode`.
fn run_mode(args: &Args, mode: Mode) -> Result<Vec<Measure>> {
    if mode == Mode::Ledger {
        return run_ledger(args);
    }
    let s = run_processes(args, mode)?;
    let mut m = vec![
        ("HTTP floor: idle `GET` of an unknown path", s.iter().filter_map(|s| s.floor).collect()),
        ("t0 → 202 read (the submission)", s.iter().map(|s| s.submit).collect()),
        ("t0 → the API's TasksQueued at a 3rd bus client", s.iter().filter_map(|s| s.signal).collect()),
        ("**t0 → run left `queued` (enqueue → start)**", s.iter().map(|s| s.start).collect()),
        ("t0 → RunStateChanged(compiling) at the 3rd client", s.iter().filter_map(|s| s.compiling_signal).collect()),
        ("t0 → run `succeeded` (end to end)", s.iter().map(|s| s.done).collect()),
        (
            "TasksQueued at the 3rd client → start, per run",
            s.iter().filter_map(|s| s.start.checked_sub(s.signal?)).collect(),
        ),
    ];
    m.retain(|(_, v): &Measure| !v.is_empty());
    Ok(m)
}

/// Start the processes of `mode` (signal or poll), measure, stop them; returns the samples.
fn run_processes(args: &Args, mode: Mode) -> Result<Vec<Sample>> {
    let dir = tempfile::Builder::new().prefix("machina-wake.").tempdir()?;
    registry().dirs.push(dir.path().to_path_buf());
    let guard = ChildGuard;
    let port = free_port()?;
    let (bus, poll_ms) = match mode {
        Mode::Signal => (start_bus(&guard, dir.path())?, SIGNAL_MODE_POLL_MS),
        Mode::Poll | Mode::Ledger => ("none".to_string(), POLL_MODE_POLL_MS),
    };
    let conf = write_config(dir.path(), port, &bus, poll_ms)?;
    let state = dir.path().join("state");
    let mut api = daemon(&args.bin_dir, "machina-api", &conf, &state, &dir.path().join("api.log"))?;
    api.arg("--listen").arg(format!("127.0.0.1:{port}"));
    guard.spawn("machina-api", &mut api)?;
    wait_healthy(port, Instant::now() + Duration::from_secs(20), &guard).map_err(|e| with_logs(e, dir.path()))?;
    let mut worker = daemon(&args.bin_dir, "machina-worker", &conf, &state, &dir.path().join("worker.log"))?;
    worker.arg("--id").arg("w1");
    guard.spawn("machina-worker", &mut worker)?;

    let ledger = rusqlite::Connection::open_with_flags(
        state.join("ledger.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    ledger.busy_timeout(Duration::from_secs(5))?;
    // The worker checks in with the ledger right after it started its slots and its listener.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ledger.query_row("SELECT COUNT(*) FROM workers WHERE id = 'w1'", [], |r| r.get::<_, i64>(0))? == 0 {
        guard.check_alive().map_err(|e| with_logs(e, dir.path()))?;
        if Instant::now() > deadline {
            return Err(with_logs(anyhow!("machina-worker did not check in"), dir.path()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the worker's AddMatch reach the bus before the first signal.
    std::thread::sleep(Duration::from_millis(300));
    let observed = match (mode, args.diagnose) {
        (Mode::Signal, true) => Some(observe(&bus)?),
        _ => None,
    };

    eprintln!(
        "== {}: {} warmup + {} runs, settle {}-{} ms, status read every {} µs, worker poll {} ms, {}",
        mode.name(),
        args.warmup,
        args.runs,
        args.settle_ms.0,
        args.settle_ms.1,
        args.check_us,
        poll_ms,
        if args.keep_alive { "one kept-alive connection" } else { "a fresh connection per request" }
    );
    let mut rng = Rng::new();
    let mut client = Client::new(port, args.keep_alive);
    let mut samples = Vec::with_capacity(args.runs);
    for i in 0..args.warmup + args.runs {
        let floor = if args.diagnose {
            std::thread::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1)));
            let t = Instant::now();
            client.request("GET", "/wake-latency-floor", "")?;
            Some(t.elapsed())
        } else {
            None
        };
        std::thread::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1)));
        let mut s = measure_one(&mut client, &ledger, args, i).map_err(|e| with_logs(e, dir.path()))?;
        s.floor = floor;
        if i >= args.warmup {
            samples.push(s);
        }
        if (i + 1) % 50 == 0 {
            eprintln!("   {} / {}", i + 1, args.warmup + args.runs);
        }
    }
    guard.check_alive().map_err(|e| with_logs(e, dir.path()))?;
    if let Some(rx) = observed {
        std::thread::sleep(Duration::from_millis(50));
        let seen: Vec<Seen> = rx.try_iter().collect();
        for s in &mut samples {
            let t0 = s.t0.expect("measured");
            let first = |member: &str, arg: &str| {
                seen.iter().find(|e| e.member == member && e.run_id == s.run_id && e.arg == arg).map(|e| e.at - t0)
            };
            // The API announces a submission with count 1; a worker's fan-out says 0.
            s.signal = first(machina_bus::signals::TASKS_QUEUED, "1");
            s.compiling_signal = first(machina_bus::signals::RUN_STATE_CHANGED, "compiling");
        }
    }
    drop(guard);
    registry().dirs.retain(|d| d != dir.path());
    Ok(samples)
}

/// `e` with the tails of the daemons' logs.
fn with_logs(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let mut msg = format!("{e:#}");
    for name in ["bus.log", "api.log", "worker.log"] {
        if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            if !tail.is_empty() {
                msg.push_str(&format!("\n--- {name} (last lines)\n"));
                for l in tail.into_iter().rev() {
                    msg.push_str(l);
                    msg.push('\n');
                }
            }
        }
    }
    anyhow!(msg)
}

// ---------------------------------------------------------------------------------------
// Report

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds with two decimals.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One table row: the measure's p50/p90/p99/max.
fn row(mode: Mode, what: &str, values: &[Duration]) -> String {
    let mut v = values.to_vec();
    v.sort_unstable();
    format!(
        "| {} | {what} | {} | {} | {} | {} | {} |",
        mode.name(),
        v.len(),
        ms(percentile(&v, 0.50)),
        ms(percentile(&v, 0.90)),
        ms(percentile(&v, 0.99)),
        ms(*v.last().expect("non-empty"))
    )
}

/// The markdown table of every mode's measures.
fn table(results: &[(Mode, Vec<Measure>)]) -> String {
    let mut out = vec![
        "| mode | measure | runs | p50 | p90 | p99 | max |".to_string(),
        "|---|---|---:|---:|---:|---:|---:|".to_string(),
    ];
    for (mode, measures) in results {
        out.extend(measures.iter().filter(|(_, v)| !v.is_empty()).map(|(what, v)| row(*mode, what, v)));
    }
    out.join("\n")
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wake-latency: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_signal_handler() {
        eprintln!("wake-latency: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut results = Vec::new();
    for &mode in &args.modes {
        match run_mode(&args, mode) {
            Ok(s) => results.push((mode, s)),
            Err(_) if STOP.load(Ordering::SeqCst) => {
                // The signal handler is cleaning up and exits with 130 while holding this lock.
                let _wait = registry();
                return ExitCode::from(130);
            }
            Err(e) => {
                eprintln!("wake-latency: {} mode: {e:#}", mode.name());
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{}", table(&results));
    ExitCode::SUCCESS
}
