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

// ---------------------------------------------------------------------------------------
// Child processes

/// Every child process and temp directory alive, for the guard and the signal handler.
static REGISTRY: Mutex<Registry> = Mutex::new(Registry { children: Vec::new(), dirs: Vec::new() });
/// Set by SIGINT/SIGTERM/SIGHUP: the measuring loops stop.
static STOP: AtomicBool = AtomicBool::new(false);

/// What has to go when the benchmark ends.
struct Registry {
    /// (name, process), in start order.
    children: Vec<(String, Child)>,
    /// Temp directories (removed by their `TempDir` normally; by the signal handler otherwise).
    dirs: Vec<PathBuf>,
}

/// The registry, even if a panic poisoned its lock.
fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kill (SIGKILL) and reap every registered child, newest first.
fn kill_all() {
    let mut r = registry();
    while let Some((_, mut c)) = r.children.pop() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Kills every child process when dropped: at the end of a mode, on an error, or while a
/// panic unwinds.
struct ChildGuard;

impl ChildGuard {
    /// Start `cmd` as a registered child named `name`.
    fn spawn(&self, name: &str, cmd: &mut Command) -> Result<u32> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let pid = child.id();
        registry().children.push((name.to_string(), child));
        Ok(pid)
    }

    /// Register an already started child.
    fn adopt(&self, name: &str, child: Child) {
        registry().children.push((name.to_string(), child));
    }

    /// Fail if a child exited.
    fn check_alive(&self) -> Result<()> {
        for (name, c) in registry().children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited: {status}");
            }
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_all();
    }
}

/// On SIGINT/SIGTERM/SIGHUP: kill the children, remove the temp directories, exit 130.
fn install_signal_handler() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (ready_tx, ready_rx) = mpsc::sync_channel::<std::io::Result<()>>(1);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = (|| {
                Ok((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?))
            })();
            let (mut int, mut term, mut hup) = match handlers {
                Ok(h) => {
                    let _ = ready_tx.send(Ok(()));
                    h
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            STOP.store(true, Ordering::SeqCst);
            // Held until the process exits: the main thread, seeing STOP, waits on it.
            let mut r = registry();
            while let Some((_, mut c)) = r.children.pop() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for d in r.dirs.drain(..) {
                let _ = std::fs::remove_dir_all(d);
            }
            eprintln!("wake-latency: interrupted; child processes killed");
            std::process::exit(130);
        });
    })?;
    ready_rx.recv().map_err(|_| anyhow!("the signal thread died"))?.context("cannot handle signals")
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private dbus-daemon admitting everyone (as the test harness runs it); returns its address.
fn start_bus(guard: &ChildGuard, dir: &Path) -> Result<String> {
    let socket = dir.join("bus");
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>"#,
        socket.display()
    );
    let conf = dir.join("bus.conf");
    std::fs::write(&conf, config)?;
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("bus.log"))?)
        .spawn()
        .context("cannot start dbus-daemon (package dbus)")?;
    let stdout = child.stdout.take().expect("piped");
    guard.adopt("dbus-daemon", child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("unix:") {
        bail!("dbus-daemon printed {line:?}");
    }
    Ok(line.trim().to_string())
}

/// Configuration drop-in, token and recipe under `dir`.
fn write_config(dir: &Path, port: u16, bus: &str, poll_ms: u64) -> Result<PathBuf> {
    let conf = dir.join("config.d");
    let recipes = dir.join("recipes.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&recipes)?;
    std::fs::write(dir.join("token"), TOKEN)?;
    std::fs::write(
        conf.join("50-wake-bench.toml"),
        format!(
            "recipe_dirs = [\"{recipes}\"]\n\
             [api]\ntoken_file = \"{token}\"\nlisten = \"127.0.0.1:{port}\"\nidle_exit_secs = 0\n\
             [bus]\naddress = \"{bus}\"\n\
             [worker]\npoll_ms = {poll_ms}\n",
            recipes = recipes.display(),
            token = dir.join("token").display(),
        ),
    )?;
    std::fs::write(
        recipes.join(format!("{RECIPE}.toml")),
        format!(
            "name = \"{RECIPE}\"\n\
             description = \"wake-latency benchmark: one no-op task, no approval\"\n\
             approval_required = false\n\
             max_concurrency = 1\nmax_steps = 1\nallowed_tools = [\"shell\"]\n\n\
             [[task]]\nname = \"true\"\ntool = \"shell\"\nargv = [\"/usr/bin/true\"]\ntimeout_secs = 10\n"
        ),
    )?;
    Ok(conf)
}

/// A machina daemon's command line, logging warnings to `log` (not the journal).
fn daemon(bin_dir: &Path, name: &str, conf: &Path, state: &Path, log: &Path) -> Result<Command> {
    let bin = bin_dir.join(name);
    if !bin.is_file() {
        bail!("{} not found (cargo build --release --bin {name}, or --bin-dir)", bin.display());
    }
    let mut cmd = Command::new(bin);
    cmd.arg("--config-dir").arg(conf).arg("--state-dir").arg(state);
    cmd.env_remove("STATE_DIRECTORY").env_remove("CREDENTIALS_DIRECTORY").env_remove("NOTIFY_SOCKET");
    cmd.env("MACHINA_LOG", "warn").env("MACHINA_LOG_TARGET", "stderr");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(log)?);
    Ok(cmd)
}

// ---------------------------------------------------------------------------------------
// HTTP

/// An HTTP/1.1 client: a fresh connection per request, or one kept alive (`--keep-alive`).
struct Client {
    /// The API's loopback port.
    port: u16,
    /// Reuse one connection instead of connecting for each request.
    keep_alive: bool,
    /// The kept connection.
    conn: Option<TcpStream>,
}

impl Client {
    /// A client of the API on `port`.
    fn new(port: u16, keep_alive: bool) -> Self {
        Self { port, keep_alive, conn: None }
    }

    /// One request; returns the status and the body, complete.
    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = match self.conn.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(("127.0.0.1", self.port))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s
            }
        };
        let close = if self.keep_alive { "" } else { "Connection: close\r\n" };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before the response headers");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
        let closing = head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"));
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
        });
        match length {
            Some(len) => {
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        bail!("connection closed inside the response body");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                if self.keep_alive && !closing {
                    self.conn = Some(s);
                }
            }
            None => {
                s.read_to_end(&mut buf)?;
            }
        }
        Ok((status, String::from_utf8_lossy(&buf[head_end..]).into_owned()))
    }
}

/// Wait until `GET /health` answers 200, failing early if a child died.
fn wait_healthy(port: u16, deadline: Instant, guard: &ChildGuard) -> Result<()> {
    while Instant::now() < deadline {
        guard.check_alive()?;
        if Client::new(port, false).request("GET", "/health", "").is_ok_and(|(st, _)| st == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("machina-api did not become healthy")
}

// ---------------------------------------------------------------------------------------
// Bus observer

/// A signal as a third bus client received it.
struct Seen {
    /// When the observer thread got it.
    at: Instant,
    /// Signal name.
    member: String,
    /// First argument.
    run_id: String,
    /// The count (TasksQueued) or the state (RunStateChanged).
    arg: String,
}

/// Subscribe to TasksQueued and RunStateChanged on `address` from a thread of its own;
/// returns once the match rules are in place.
fn observe(address: &str) -> Result<mpsc::Receiver<Seen>> {
    use futures::StreamExt;
    use machina_bus::signals;
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
    let address = address.to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("observer".into()).spawn(move || {
        rt.block_on(async move {
            let subscribed = async {
                let conn = zbus::connection::Builder::address(address.as_str()).build().await?;
                let queued = signals::subscribe(&conn, signals::TASKS_QUEUED).await?;
                let changed = signals::subscribe(&conn, signals::RUN_STATE_CHANGED).await?;
                zbus::Result::Ok((conn, queued, changed))
            };
            let (_conn, queued, changed) = match subscribed.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("observer cannot subscribe: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut all = futures::stream::select(queued, changed);
            while let Some(Ok(msg)) = all.next().await {
                let at = Instant::now();
                let member = msg.header().member().map(|m| m.to_string()).unwrap_or_default();
                let body = msg.body();
                let (run_id, arg) = if member == signals::TASKS_QUEUED {
                    body.deserialize::<(String, u32)>().map(|(r, n)| (r, n.to_string())).unwrap_or_default()
                } else {
                    body.deserialize::<(String, String)>().unwrap_or_default()
                };
                if tx.send(Seen { at, member, run_id, arg }).is_err() {
                    return;
                }
            }
        });
    })?;
    ready_rx.recv().map_err(|_| anyhow!("observer thread died"))??;
    Ok(rx)
}

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

/// Diagnosis: the ledger calls on the enqueue-to-start path, in this process, each after
/// the same idle pause as the end-to-end runs. Per run: the API's submission commit, then
/// the worker's `has_work` read, `reclaim` (a write transaction that finds nothing) and
/// the compile claim (`claim_work`); then (untimed) the rest of the run the way a worker
/// does it. Also the cost of one idle thread hop (`spawn_blocking` of nothing) and of one
/// `fdatasync` after overwriting 4 KiB in the state directory (the disk alone).
fn run_ledger(args: &Args) -> Result<Vec<Measure>> {
    use machina_core::{Plan, TaskSpec};
    use machina_ledger::{CompiledPlan, Ledger, LedgerOptions, NewIntent, NewRun, Submission, TaskReport, Work};
    let dir = tempfile::Builder::new().prefix("machina-wake.").tempdir()?;
    registry().dirs.push(dir.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let state = dir.path().join("state");
    let lease_ms = 30_000;
    let result = rt.block_on(async {
        let mut opts = LedgerOptions::new(&state);
        let want = if args.ledger_normal {
            opts.durability = machina_ledger::Durability::Normal;
            1
        } else {
            2
        };
        let ledger = Ledger::open(opts)?;
        let p = ledger.pragmas();
        if (p.journal_mode.as_str(), p.synchronous) != ("wal", want) {
            bail!("the ledger is not WAL + synchronous={want}: {} {}", p.journal_mode, p.synchronous);
        }
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.join("fsync-probe"))?;
        let mut names = [
            "submit (the API's commit: intent + run)",
            "has_work (read)",
            "reclaim (write txn, nothing found)",
            "claim_work (the compile claim)",
            "**has_work + reclaim + claim_work** (worker, woken → start)",
            "idle thread hop: `spawn_blocking(noop)`",
            "`fdatasync` of a 4 KiB overwrite",
        ]
        .map(|n| (n, Vec::with_capacity(args.runs)));
        eprintln!(
            "== ledger: {} warmup + {} runs, settle {}-{} ms, in process, synchronous={}",
            args.warmup,
            args.runs,
            args.settle_ms.0,
            args.settle_ms.1,
            if want == 2 { "FULL" } else { "NORMAL (experiment)" }
        );
        let mut rng = Rng::new();
        for i in 0..args.warmup + args.runs {
            if STOP.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            tokio::time::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1))).await;
            let intent = NewIntent {
                goal: format!("wake {i}"),
                inputs: serde_json::json!({}),
                constraints: serde_json::json!({}),
            };
            let run = NewRun {
                intent_id: String::new(),
                recipe: RECIPE.into(),
                partition_key: "default".into(),
                workload: serde_json::json!({}),
                concurrency: 1,
            };
            let t = Instant::now();
            ledger.submit(None, Submission::Enqueue(intent, run)).await?;
            let t_submit = Instant::now();
            if !ledger.has_work().await? {
                bail!("has_work says no after a submission");
            }
            let t_has = Instant::now();
            ledger.reclaim(None).await?;
            let t_reclaim = Instant::now();
            let Some(Work::Compile(job)) = ledger.claim_work("w1", lease_ms).await? else {
                bail!("claim_work did not return the compile");
            };
            let t_claim = Instant::now();
            // The rest of the run, as a worker does it (untimed).
            let spec = TaskSpec {
                name: "true".into(),
                tool: "shell".into(),
                argv: vec!["/usr/bin/true".into()],
                timeout_secs: 10,
            };
            let plan = Plan { recipe: RECIPE.into(), concurrency: 1, tasks: vec![spec] };
            let sha = ledger.put_artifact(plan.canonical_bytes(), "application/json").await?;
            ledger
                .finish_compile(&job, "w1", Ok(CompiledPlan { plan, plan_sha256: sha, approval_required: false }))
                .await?;
            let Some(Work::Task(task)) = ledger.claim_work("w1", lease_ms).await? else {
                bail!("claim_work did not return the task");
            };
            let report = TaskReport {
                task_id: task.task_id,
                owner: "w1".into(),
                attempt: task.attempt,
                err_code: None,
                exit_status: Some(0),
                stdout_sha256: None,
                stderr_sha256: None,
                wall_ms: 1,
            };
            let (done, _) = ledger.complete_and_claim(report, lease_ms).await?;
            if done.run_status != machina_core::RunStatus::Succeeded {
                bail!("run ended {}", done.run_status);
            }
            tokio::time::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1))).await;
            let h = Instant::now();
            tokio::task::spawn_blocking(|| ()).await?;
            let hop = h.elapsed();
            let (f, sync) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&[i as u8; 4096], 0)?;
                let s = Instant::now();
                file.sync_data()?;
                Ok((file, s.elapsed()))
            })
            .await??;
            file = f;
            if i >= args.warmup {
                let values = [
                    t_submit - t,
                    t_has - t_submit,
                    t_reclaim - t_has,
                    t_claim - t_reclaim,
                    t_claim - t_submit,
                    hop,
                    sync,
                ];
                for ((_, v), d) in names.iter_mut().zip(values) {
                    v.push(d);
                }
            }
        }
        Ok(names.to_vec())
    });
    drop(rt);
    registry().dirs.retain(|d| d != dir.path());
    result
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
