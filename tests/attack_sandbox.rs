//! Attack suite for the task sandbox: real commands run through the real
//! `machina-task-exec` under real landlock and rlimits, each trying to break out.
//! Every attack must fail; controls show the same command works where it is allowed,
//! so a "blocked" result is not just a broken command. Prints
//! `attack-suite sandbox: N tried, N blocked`.

use machina_sandbox::{Rlimits, SandboxSpec, preflight};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

const TASK_EXEC: &str = env!("CARGO_BIN_EXE_machina-task-exec");
const SECRET: &str = "ledger-secret-4f1c";
const SIGXCPU: i32 = 24;
const SIGXFSZ: i32 = 25;
const SIGKILL: i32 = 9;

/// A state directory laid out like the worker's: a ledger beside `tasks/KEY/ATTEMPT`.
struct Fixture {
    _root: tempfile::TempDir,
    state: PathBuf,
    ledger: PathBuf,
    task: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let task = state.join("tasks").join("k").join("1");
        std::fs::create_dir_all(&task).unwrap();
        let ledger = state.join("ledger.sqlite");
        std::fs::write(&ledger, SECRET).unwrap();
        Self { state, ledger, task, _root: root }
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec::new(&self.task)
    }
}

#[derive(Default)]
struct Tally {
    tried: u32,
    blocked: u32,
    escaped: Vec<String>,
}

impl Tally {
    fn attack(&mut self, name: &str, blocked: bool, evidence: impl std::fmt::Display) {
        self.tried += 1;
        if blocked {
            self.blocked += 1;
            println!("blocked: {name}");
        } else {
            println!("ESCAPED: {name}: {evidence}");
            self.escaped.push(format!("{name}: {evidence}"));
        }
    }
}

fn command(spec: &SandboxSpec, argv: &[&str]) -> Command {
    let mut c = Command::new(TASK_EXEC);
    c.arg("--spec-json")
        .arg(serde_json::to_string(spec).unwrap())
        .arg("--")
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&spec.task_dir)
        .stdin(Stdio::null());
    c
}

fn run(spec: &SandboxSpec, argv: &[&str]) -> Output {
    command(spec, argv).output().expect("spawn machina-task-exec")
}

fn sh(spec: &SandboxSpec, script: &str) -> Output {
    run(spec, &["/bin/sh", "-c", script])
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Wait at most `limit` for `child`; kill it if it is still running then.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn controls_the_sandbox_lets_a_task_work_in_its_directory() {
    let f = Fixture::new();
    let o = sh(&f.spec(), "echo ok > f && cat f && cat /etc/ld.so.cache > /dev/null && echo done");
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\ndone\n");
    let o = run(&f.spec(), &["/nonexistent/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot execute"));
    let mut spec = f.spec();
    spec.task_dir = f.task.join("missing");
    let o = command(&spec, &["/bin/true"]).current_dir(&f.task).output().unwrap();
    assert_eq!(o.status.code(), Some(125), "a spec that cannot be applied runs nothing: {}", show(&o));
}

#[test]
fn attack_suite() {
    let f = Fixture::new();
    let pre = preflight();
    println!("preflight: {pre}");
    let mut t = Tally::default();
    filesystem_attacks(&f, &mut t);
    network_attack(&f, &pre, &mut t);
    signal_attack(&f, &pre, &mut t);
    rlimit_attacks(&f, &mut t);
    capability_attacks(&f, &mut t);
    fork_bomb(&mut t);
    println!("attack-suite sandbox: {} tried, {} blocked", t.tried, t.blocked);
    assert!(t.escaped.is_empty(), "attacks that got through: {:#?}", t.escaped);
}

fn filesystem_attacks(f: &Fixture, t: &mut Tally) {
    let spec = f.spec();
    let tmp_target = PathBuf::from(format!("/tmp/machina-attack-{}", std::process::id()));
    let o = sh(&spec, &format!("echo x > {}", tmp_target.display()));
    t.attack("write /tmp outside the task dir", !tmp_target.exists(), show(&o));
    let _ = std::fs::remove_file(&tmp_target);

    let o = sh(&spec, "echo x > ../../../planted");
    t.attack("write into the state dir", !f.state.join("planted").exists(), show(&o));

    let o = sh(&spec, &format!("echo x >> {}", f.ledger.display()));
    let intact = std::fs::read_to_string(&f.ledger).unwrap() == SECRET;
    t.attack("append to the ledger", intact, show(&o));

    let o = run(&spec, &["/bin/cat", f.ledger.to_str().unwrap()]);
    t.attack("read the ledger", !leaks(&o), show(&o));

    let o = run(&spec, &["/bin/cat", "/etc/shadow"]);
    t.attack("read /etc/shadow", !o.status.success() && o.stdout.is_empty(), show(&o));

    std::os::unix::fs::symlink(&f.ledger, f.task.join("planted-link")).unwrap();
    let o = run(&spec, &["/bin/cat", "planted-link"]);
    t.attack("follow a symlink planted in the task dir", !leaks(&o), show(&o));

    let o = sh(&spec, &format!("ln -s {} own-link; cat own-link", f.ledger.display()));
    t.attack("create and follow a symlink out", !leaks(&o), show(&o));

    let o = sh(&spec, &format!("ln {} hard; cat hard", f.ledger.display()));
    t.attack("hard-link the ledger into the task dir", !leaks(&o), show(&o));

    let o = sh(&spec, &format!("mv {} stolen; cat stolen", f.ledger.display()));
    t.attack("move the ledger into the task dir", !leaks(&o) && f.ledger.exists(), show(&o));

    let o = run(&spec, &["/bin/ls", "/"]);
    t.attack("list the root directory", !o.status.success(), show(&o));
}

fn leaks(o: &Output) -> bool {
    String::from_utf8_lossy(&o.stdout).contains(SECRET)
}

fn network_attack(f: &Fixture, pre: &machina_sandbox::Preflight, t: &mut Tally) {
    if !pre.landlock_network {
        println!("skipped: TCP denial needs landlock ABI 4, this kernel has {}", pre.landlock_abi);
        assert!(pre.landlock_abi < 4);
        return;
    }
    let connect = |network: bool| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut spec = f.spec();
        spec.network = network;
        let o = run(&spec, &["/bin/bash", "-c", &format!("echo hi > /dev/tcp/127.0.0.1/{port}")]);
        let accepted = match listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        };
        (accepted, o)
    };
    let (accepted, o) = connect(true);
    assert!(accepted && o.status.success(), "control: with network allowed the connection works: {}", show(&o));
    let (accepted, o) = connect(false);
    t.attack("TCP connect to 127.0.0.1 with network=false", !accepted && !o.status.success(), show(&o));
}

fn signal_attack(f: &Fixture, pre: &machina_sandbox::Preflight, t: &mut Tally) {
    if !pre.landlock_scopes {
        println!("skipped: signal scoping needs landlock ABI 6, this kernel has {}", pre.landlock_abi);
        return;
    }
    let mut victim = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let o = run(&f.spec(), &["/bin/kill", "-KILL", &victim.id().to_string()]);
    std::thread::sleep(Duration::from_millis(50));
    let alive = victim.try_wait().unwrap().is_none();
    t.attack("kill a process outside the sandbox", alive, show(&o));
    let _ = victim.kill();
    let _ = victim.wait();
}

fn rlimit_attacks(f: &Fixture, t: &mut Tally) {
    let mut spec = f.spec();
    spec.rlimits =
        Rlimits { cpu_secs: 1, address_space_bytes: 256 << 20, file_size_bytes: 1 << 20, ..Rlimits::default() };

    let o = run(&spec, &["/bin/dd", "if=/dev/zero", "of=big", "bs=64k", "count=64"]);
    let size = std::fs::metadata(f.task.join("big")).map(|m| m.len()).unwrap_or(0);
    let blocked = size <= 1 << 20 && (o.status.signal() == Some(SIGXFSZ) || !o.status.success());
    t.attack("write a file beyond file_size_bytes", blocked, format!("size {size}, {}", show(&o)));

    let o = run(&spec, &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"]);
    assert!(o.status.success(), "control: a small buffer is fine: {}", show(&o));
    let o = run(&spec, &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=512M", "count=1"]);
    t.attack("allocate beyond address_space_bytes", !o.status.success(), show(&o));

    let mut child = command(&spec, &["/bin/sh", "-c", "while :; do :; done"]).spawn().unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let killed = status.and_then(|s| s.signal()).is_some_and(|s| s == SIGXCPU || s == SIGKILL);
    t.attack("spin the CPU beyond cpu_secs", killed, format!("{status:?}"));
}

fn capability_attacks(f: &Fixture, t: &mut Tally) {
    let mut spec = f.spec();
    spec.read_only.push("/proc".into());
    let o = run(&spec, &["/bin/grep", "^Cap", "/proc/self/status"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let all_zero = text.lines().count() == 5 && text.lines().all(|l| l.ends_with("0000000000000000"));
    t.attack("hold any capability (CapInh/Prm/Eff/Bnd/Amb)", all_zero, show(&o));

    std::fs::write(f.task.join("mine"), "x").unwrap();
    let o = run(&spec, &["/bin/chown", "65534", "mine"]);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(f.task.join("mine")).unwrap());
    t.attack("chown a file to another user (CAP_CHOWN)", uid != 65534, show(&o));

    let o = run(&spec, &["/usr/bin/setpriv", "--reuid=65534", "/bin/true"]);
    t.attack("switch uid (CAP_SETUID)", !o.status.success(), show(&o));
}

/// RLIMIT_NPROC counts the processes of a uid and never applies to root, so the bomb runs
/// as nobody (setpriv) — possible only when the suite runs as root.
fn fork_bomb(t: &mut Tally) {
    if !nix::unistd::Uid::effective().is_root() || !Path::new("/usr/bin/setpriv").exists() {
        println!("skipped: the fork bomb needs root and setpriv to run as an unprivileged uid");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let task = root.path().join("task");
    std::fs::create_dir(&task).unwrap();
    nix::unistd::chown(&task, Some(65534.into()), Some(65534.into())).unwrap();
    let mut spec = SandboxSpec::new(&task);
    spec.rlimits.processes = 8;
    let script = "n=0; while [ $n -lt 64 ]; do sleep 2 & n=$((n+1)); done; wait";
    let c = command(&spec, &["/bin/sh", "-c", script]);
    let mut args: Vec<std::ffi::OsString> =
        ["--reuid=65534", "--regid=65534", "--clear-groups", TASK_EXEC].iter().map(Into::into).collect();
    args.extend(c.get_args().map(Into::into));
    let mut bomb = Command::new("/usr/bin/setpriv");
    bomb.args(args).env_clear().env("PATH", "/usr/bin:/bin").current_dir(&task).stdin(Stdio::null());
    let o = bomb.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let refused = err.contains("fork") || err.contains("Resource temporarily unavailable");
    t.attack("fork bomb beyond processes (as uid 65534)", refused, show(&o));
}
