//! The spawner for real: this test binary starts itself as `--serve` (`harness = false`,
//! so the spawner is the single-threaded process it must be), and its children run real
//! programs under real landlock. Checks confinement, exit statuses, stdio through the
//! passed descriptors, the exact environment, killpg of the reported pid, the pin, the
//! wrapper's refusal codes, 50 concurrent spawns, and what happens when the client
//! drops, the spawner is stopped or it crashes (nothing left running or unreaped).

use machina_sandbox::{
    ChildIo, EXIT_EXEC_FAILED, EXIT_SANDBOX_REFUSED, EXIT_VERIFY_FAILED, Identity, LazySpawner, SandboxSpec,
    SpawnError, SpawnRequest, Spawner, Verify, WRAPPER_PREFIX, preflight,
};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitCode, ExitStatus};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

/// How long a process may take to disappear after it was killed.
const GONE_WITHIN: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    // First, before any thread exists: this binary is also the spawner under test.
    if std::env::args_os().nth(1).is_some_and(|a| a == "--serve") {
        return machina_sandbox::exec_main();
    }
    // Orphans are reparented to this process rather than to init: a child the spawner
    // failed to reap would stay visible here, as a zombie of ours.
    nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let cases: [(&str, Case); 14] = [
        ("a child is confined to its task directory", |f| Box::pin(confined(f))),
        ("exit statuses: 0, 3 and a signal", |f| Box::pin(exit_statuses(f))),
        ("stdout and stderr arrive through the passed descriptors", |f| Box::pin(stdio(f))),
        ("the environment and directory are exactly the request's", |f| Box::pin(environment(f))),
        ("the task starts with default signals and only its stdio open", |f| Box::pin(starts_clean(f))),
        ("killpg of the reported pid kills the child and its children", |f| Box::pin(killpg_kills_group(f))),
        ("the pin is checked on the file exec'd: mismatch is 124", |f| Box::pin(pins(f))),
        ("the wrapper's refusals: 125 and 127", |f| Box::pin(refusals(f))),
        ("50 concurrent spawns all complete", |f| Box::pin(concurrent(f))),
        ("dropping the client stops the spawner, nothing left", |f| Box::pin(client_drop(f))),
        ("SIGTERM stops the spawner, its children killed and reaped", |f| Box::pin(sigterm(f))),
        ("a crashed spawner is reported, and restarted lazily", |f| Box::pin(crash(f))),
        ("a program that is no spawner is refused, then not retried", |f| Box::pin(not_a_spawner(f))),
        ("a pre-forked child killed while it waits is replaced", |f| Box::pin(idle_child_killed(f))),
    ];
    for (name, case) in cases {
        let f = Fixture::new();
        rt.block_on(case(&f));
        println!("ok: {name}");
    }
    ExitCode::SUCCESS
}

type Case = for<'a> fn(&'a Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

struct Fixture {
    _root: tempfile::TempDir,
    root: PathBuf,
    task: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let task = root.path().join("task");
        std::fs::create_dir(&task).unwrap();
        Self { root: root.path().to_path_buf(), task, _root: root }
    }

    fn request(&self, argv: &[&str]) -> SpawnRequest {
        let mut r = SpawnRequest::new(SandboxSpec::new(&self.task), argv[0]);
        r.args = argv[1..].iter().map(OsString::from).collect();
        r.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        r.stdout = ChildIo::Piped;
        r.stderr = ChildIo::Piped;
        r
    }
}

async fn start() -> Spawner {
    Spawner::start(&std::env::current_exe().unwrap()).await.expect("start the spawner")
}

/// Run to the end: status, stdout, stderr.
async fn run(sp: &Spawner, req: SpawnRequest) -> (ExitStatus, String, String) {
    let mut c = sp.spawn(req).await.expect("spawn");
    let (mut out, mut err) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let (r1, r2, status) = tokio::join!(out.read_to_end(&mut o), err.read_to_end(&mut e), c.wait());
    r1.unwrap();
    r2.unwrap();
    (status.expect("exit status"), String::from_utf8_lossy(&o).into_owned(), String::from_utf8_lossy(&e).into_owned())
}

async fn confined(f: &Fixture) {
    if preflight().landlock_abi == 0 {
        println!("skipped: landlock is not supported by this kernel");
        return;
    }
    let sp = start().await;
    let script = "echo x > ../escaped; echo y > inside";
    let (_, _, err) = run(&sp, f.request(&["/bin/sh", "-c", script])).await;
    assert!(err.contains("Permission denied"), "the write outside must fail: {err}");
    assert!(!f.root.join("escaped").exists(), "the child wrote outside its task directory");
    assert!(f.task.join("inside").exists(), "control: the child writes in its task directory: {err}");
}

async fn exit_statuses(f: &Fixture) {
    let sp = start().await;
    let (s, ..) = run(&sp, f.request(&["/bin/true"])).await;
    assert_eq!(s.code(), Some(0));
    let (s, ..) = run(&sp, f.request(&["/bin/sh", "-c", "exit 3"])).await;
    assert_eq!(s.code(), Some(3));
    let (s, ..) = run(&sp, f.request(&["/bin/sh", "-c", "kill -TERM $$"])).await;
    assert_eq!((s.code(), s.signal()), (None, Some(Signal::SIGTERM as i32)));
}

async fn stdio(f: &Fixture) {
    let sp = start().await;
    let (s, out, err) = run(&sp, f.request(&["/bin/sh", "-c", "echo out; echo err >&2; read x; echo \"[$x]\""])).await;
    assert!(s.success());
    assert_eq!((out.as_str(), err.as_str()), ("out\n[]\n", "err\n"), "stdin is /dev/null");
    // A descriptor of the caller's: a file in the task directory.
    let file = std::fs::File::create(f.task.join("log")).unwrap();
    let mut r = f.request(&["/bin/echo", "to the file"]);
    r.stdout = ChildIo::Fd(file.into());
    let (s, out, _) = run_unpiped_stdout(&sp, r).await;
    assert!(s.success() && out.is_empty());
    assert_eq!(std::fs::read_to_string(f.task.join("log")).unwrap(), "to the file\n");
}

async fn run_unpiped_stdout(sp: &Spawner, req: SpawnRequest) -> (ExitStatus, String, String) {
    let mut c = sp.spawn(req).await.expect("spawn");
    assert!(c.stdout.is_none());
    let mut e = Vec::new();
    c.stderr.take().unwrap().read_to_end(&mut e).await.unwrap();
    (c.wait().await.unwrap(), String::new(), String::from_utf8_lossy(&e).into_owned())
}

async fn environment(f: &Fixture) {
    let sp = start().await;
    let mut r = f.request(&["env"]);
    r.env = vec![("PATH".into(), "/usr/bin:/bin".into()), ("B".into(), "2".into()), ("A".into(), "x=y".into())];
    let (s, out, err) = run(&sp, r).await;
    assert!(s.success(), "a bare name is looked up in the request's PATH: {err}");
    assert_eq!(out, "PATH=/usr/bin:/bin\nB=2\nA=x=y\n", "exactly the request's variables, in its order");
    let (_, out, _) = run(&sp, f.request(&["/bin/pwd"])).await;
    assert_eq!(out.trim(), f.task.to_str().unwrap());
    let mut r = f.request(&["/bin/true"]);
    r.env.push(("BAD=NAME".into(), "v".into()));
    assert_eq!(sp.spawn(r).await.unwrap_err().kind(), "spawner_invalid_request");
    let mut r = f.request(&["/bin/true"]);
    r.args.push("a\0b".into());
    assert_eq!(sp.spawn(r).await.unwrap_err().kind(), "spawner_invalid_request");
    let mut r = f.request(&["/bin/true"]);
    r.args.push("x".repeat(machina_sandbox::MAX_REQUEST_BYTES).into());
    let e = sp.spawn(r).await.unwrap_err();
    assert!(matches!(e, SpawnError::TooLarge { .. }) && e.use_wrapper(), "{e}");
}

/// Nothing blocked and SIGPIPE not ignored (the spawner blocks signals, Rust ignores
/// SIGPIPE), and no descriptor of the spawner's (its socket, signalfd, the paths a
/// pre-forked child opens ahead) — with and without a pin (execveat vs execve).
async fn starts_clean(f: &Fixture) {
    let sp = start().await;
    for pinned in [false, true] {
        let mut r = f.request(&["/bin/ls", "/proc/self/fd"]);
        r.spec.read_only.push("/proc".into());
        if pinned {
            r.verify = Some(sha256(Path::new("/bin/ls")));
        }
        let (s, out, err) = run(&sp, r).await;
        assert!(s.success(), "{err}");
        let fds: BTreeSet<u32> = out.lines().map(|l| l.parse().unwrap()).collect();
        // Stdio, the directory ls reads (3), and what this process got without close-on-exec
        // from whoever started it (passed on by any spawn, the wrapper's too): nothing else.
        let expected: BTreeSet<u32> = [0, 1, 2, 3].into_iter().chain(inherited_fds()).collect();
        assert_eq!(fds, expected, "pinned={pinned}: only stdio is inherited");
    }
    for pinned in [false, true] {
        let mut r = f.request(&["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
        r.spec.read_only.push("/proc".into());
        if pinned {
            r.verify = Some(sha256(Path::new("/bin/grep")));
        }
        let (s, out, err) = run(&sp, r).await;
        assert!(s.success(), "{err}");
        let mask = |name: &str| {
            let line = out.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {out}"));
            u64::from_str_radix(line.rsplit('\t').next().unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigBlk"), 0, "pinned={pinned}: nothing blocked: {out}");
        // Whatever this environment ignores is inherited, as with any exec; SIGPIPE not.
        let sigpipe = 1 << (Signal::SIGPIPE as u64 - 1);
        assert_eq!(mask("SigIgn") & sigpipe, 0, "pinned={pinned}: SIGPIPE ignored: {out}");
    }
}

async fn killpg_kills_group(f: &Fixture) {
    let sp = start().await;
    let script = "sleep 30 & echo $!; sleep 30 & echo $!; wait";
    let mut c = sp.spawn(f.request(&["/bin/sh", "-c", script])).await.unwrap();
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut pids = vec![c.id() as i32];
    for _ in 0..2 {
        pids.push(lines.next_line().await.unwrap().unwrap().parse().unwrap());
    }
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?} run");
    assert!(process(pids[1]).is_some_and(|p| p.pgrp == pids[0]), "grandchildren are in the child's group");
    killpg(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let status = c.wait().await.unwrap();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    wait_until("the group is gone", || pids.iter().all(|&p| !alive(p))).await;
    reap_orphans(&pids[1..]);
}

async fn pins(f: &Fixture) {
    let sp = start().await;
    let prog = f.root.join("prog");
    std::fs::copy("/usr/bin/true", &prog).unwrap();
    let p = prog.to_str().unwrap();
    let mut r = f.request(&[p]);
    r.spec.read_only.push(prog.clone());
    r.verify = Some(Verify::Stat(Identity::of(&std::fs::metadata(&prog).unwrap())));
    let (s, _, err) = run(&sp, r).await;
    assert!(s.success(), "control: the pinned file runs: {err}");
    let mut r = f.request(&[p]);
    r.spec.read_only.push(prog.clone());
    r.verify = Some(sha256(Path::new("/usr/bin/id")));
    let (s, out, err) = run(&sp, r).await;
    assert_eq!(s.code(), Some(i32::from(EXIT_VERIFY_FAILED)), "{err}");
    assert!(err.starts_with(WRAPPER_PREFIX) && err.contains("is not the pinned file") && out.is_empty(), "{err}");
}

async fn refusals(f: &Fixture) {
    let sp = start().await;
    let mut r = f.request(&["/bin/true"]);
    r.spec.task_dir = f.task.join("missing");
    let (s, _, err) = run(&sp, r).await;
    assert_eq!(s.code(), Some(i32::from(EXIT_SANDBOX_REFUSED)), "{err}");
    assert!(err.starts_with(WRAPPER_PREFIX), "{err}");
    let (s, _, err) = run(&sp, f.request(&["/nonexistent/program"])).await;
    assert_eq!(s.code(), Some(i32::from(EXIT_EXEC_FAILED)), "{err}");
    assert!(err.starts_with(WRAPPER_PREFIX) && err.contains("cannot execute"), "{err}");
    let mut r = f.request(&["/bin/true"]);
    r.cwd = f.task.join("missing");
    let (s, _, err) = run(&sp, r).await;
    assert_eq!(s.code(), Some(i32::from(EXIT_EXEC_FAILED)), "{err}");
}

async fn concurrent(f: &Fixture) {
    let sp = start().await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (sp, r) = (sp.clone(), f.request(&["/bin/echo", &i.to_string()]));
        set.spawn(async move { (i, run(&sp, r).await) });
    }
    let mut seen = Vec::new();
    while let Some(done) = set.join_next().await {
        let (i, (s, out, err)) = done.unwrap();
        assert!(s.success(), "{i}: {err}");
        assert_eq!(out, format!("{i}\n"));
        seen.push(i);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

async fn client_drop(f: &Fixture) {
    let sp = start().await;
    let spid = sp.pid() as i32;
    let (s, ..) = run(&sp, f.request(&["/bin/true"])).await;
    assert!(s.success());
    let running = sp.spawn(f.request(&["/bin/sleep", "30"])).await.unwrap();
    let cpid = running.id() as i32;
    assert!(alive(cpid));
    drop(running);
    drop(sp);
    wait_until("the spawner exits", || !alive(spid)).await;
    assert_eq!(process(cpid), None, "the spawner left its child running or unreaped");
    assert_eq!(children_of(spid), Vec::<Proc>::new(), "the spawner left children");
}

async fn sigterm(f: &Fixture) {
    let sp = start().await;
    let spid = sp.pid() as i32;
    let mut running = sp.spawn(f.request(&["/bin/sleep", "30"])).await.unwrap();
    let cpid = running.id() as i32;
    kill(Pid::from_raw(spid), Signal::SIGTERM).unwrap();
    // Killed and reaped by the spawner, which still reports it on the way out.
    let status = running.wait().await.expect("reported before the spawner exited");
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    wait_until("the spawner exits", || !alive(spid)).await;
    assert_eq!(process(cpid), None, "the spawner left its child running or unreaped");
    assert_eq!(children_of(spid), Vec::<Proc>::new());
    wait_until("the client sees it gone", || sp.failure().is_some()).await;
    let e = sp.spawn(f.request(&["/bin/true"])).await.unwrap_err();
    assert!(e.use_wrapper(), "{e}");
}

async fn crash(f: &Fixture) {
    let lazy = LazySpawner::new(std::env::current_exe().unwrap());
    let sp = lazy.get().await.expect("started");
    assert_eq!(lazy.pid().await, Some(sp.pid()));
    let mut running = sp.spawn(f.request(&["/bin/sleep", "30"])).await.unwrap();
    let cpid = running.id() as i32;
    // The pid is reported at hand-off, before the exec: a spawner killed in between takes
    // the not-yet-exec'd child with it. Wait until the task really runs.
    wait_until("the task has exec'd", || {
        std::fs::read_to_string(format!("/proc/{cpid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    })
    .await;
    kill(Pid::from_raw(sp.pid() as i32), Signal::SIGKILL).unwrap();
    let e = running.wait().await.unwrap_err();
    assert_eq!(e.kind(), "spawner_lost", "{e}");
    assert!(sp.failure().is_some_and(|why| why.contains("closed its socket")), "{:?}", sp.failure());
    // The orphan leads its own group still: killpg reaches it.
    assert!(alive(cpid), "an orphaned task keeps running until it is killed");
    killpg(Pid::from_raw(cpid), Signal::SIGKILL).unwrap();
    wait_until("the orphan is gone", || !alive(cpid)).await;
    reap_orphans(&[cpid]);
    let again = lazy.get().await.expect("restarted");
    assert_ne!(again.pid(), sp.pid());
    let (s, ..) = run(&again, f.request(&["/bin/true"])).await;
    assert!(s.success());
}

async fn not_a_spawner(_: &Fixture) {
    for program in ["/bin/true", "/nonexistent/machina-task-exec"] {
        let e = Spawner::start(Path::new(program)).await.unwrap_err();
        assert!(e.use_wrapper() && e.kind() == "spawner_unavailable", "{program}: {e}");
    }
    let lazy = LazySpawner::new("/bin/true");
    assert!(lazy.get().await.is_none());
    let t = Instant::now();
    assert!(lazy.get().await.is_none());
    assert!(t.elapsed() < Duration::from_millis(100), "no second start within the back-off");
}

async fn idle_child_killed(f: &Fixture) {
    let sp = start().await;
    let spid = sp.pid() as i32;
    // Nothing runs: the spawner's only child is the one it forked ahead.
    wait_until("the spawner forks ahead", || children_of(spid).len() == 1).await;
    let idle = children_of(spid)[0].pid;
    assert_eq!(process(idle).map(|p| p.pgrp), Some(idle), "it made its own session ahead");
    kill(Pid::from_raw(idle), Signal::SIGKILL).unwrap();
    wait_until("the spawner reaps it", || process(idle).is_none()).await;
    let (s, out, err) = run(&sp, f.request(&["/bin/echo", "still here"])).await;
    assert!(s.success() && out == "still here\n", "{err}");
    wait_until("a new one waits", || children_of(spid).iter().any(|p| p.pid != idle)).await;
}

fn sha256(path: &Path) -> Verify {
    Verify::Sha256(Sha256::digest(std::fs::read(path).unwrap()).into())
}

/// Descriptors above stdio open in this process without close-on-exec.
fn inherited_fds() -> Vec<u32> {
    const O_CLOEXEC: u32 = 0o2000000;
    let fds =
        std::fs::read_dir("/proc/self/fd").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok());
    fds.filter(|&fd: &u32| fd > 2)
        .filter(|fd| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).map(str::trim);
            flags.and_then(|f| u32::from_str_radix(f, 8).ok()).is_some_and(|f| f & O_CLOEXEC == 0)
        })
        .collect()
}

/// One line of /proc/PID/stat, the fields these tests need.
#[derive(Debug, PartialEq, Eq)]
struct Proc {
    pid: i32,
    state: char,
    ppid: i32,
    pgrp: i32,
}

fn process(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Proc { pid, state, ppid, pgrp })
}

/// Running, or at least not yet dead (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    process(pid).is_some_and(|p| p.state != 'Z' && p.state != 'X')
}

fn children_of(parent: i32) -> Vec<Proc> {
    let pids = std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse().ok());
    pids.filter_map(process).filter(|p| p.ppid == parent).collect()
}

/// Poll the process table (another process's state: nothing to await) until `done`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let until = Instant::now() + GONE_WITHIN;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {GONE_WITHIN:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reap killed processes reparented to this subreaper (tokio knows nothing of them).
fn reap_orphans(pids: &[i32]) {
    for &p in pids {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
    }
}
