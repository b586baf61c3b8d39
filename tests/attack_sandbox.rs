//! Attack suite for the task sandbox: real commands run through the real
//! `machina-task-exec` under real landlock and rlimits, each trying to break out.
//! Every attack must fail; controls show the same command works where it is allowed,
//! so a "blocked" result is not just a broken command. Every attack runs twice: through
//! the wrapper (posix_spawn'ed, it confines itself and execs) and through its spawner
//! (`--serve`: a child forked per command confines itself and execs), with the same spec.
//! Prints `attack-suite sandbox: N tried, N blocked` and `attack-suite sandbox-spawner: …`.

mod common;

use common::tally::Tally;

use machina_sandbox::{ChildIo, Rlimits, SandboxSpec, SpawnRequest, Spawner, preflight};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

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

fn show(o: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How the suite starts a confined command.
enum Runner {
    /// posix_spawn of machina-task-exec, which confines itself and execs the command.
    Wrapper,
    /// machina-task-exec --serve, whose child confines itself and execs the command.
    Spawner { rt: tokio::runtime::Runtime, spawner: Spawner },
}

impl Runner {
    /// A spawner running `program --serve` (machina-task-exec, or a script exec'ing it).
    fn spawner(program: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let spawner = rt.block_on(Spawner::start(program)).expect("start machina-task-exec --serve");
        Self::Spawner { rt, spawner }
    }

    fn run(&self, spec: &SandboxSpec, argv: &[&str]) -> Output {
        self.run_in(spec, argv, &spec.task_dir)
    }

    fn sh(&self, spec: &SandboxSpec, script: &str) -> Output {
        self.run(spec, &["/bin/sh", "-c", script])
    }

    /// Run `argv` confined by `spec` with `dir` as its working directory, to the end.
    fn run_in(&self, spec: &SandboxSpec, argv: &[&str], dir: &Path) -> Output {
        match self {
            Self::Wrapper => command(spec, argv).current_dir(dir).output().expect("spawn machina-task-exec"),
            Self::Spawner { rt, spawner } => rt.block_on(async {
                let mut c = spawner.spawn(request(spec, argv, dir)).await.expect("spawn through the spawner");
                let (mut out, mut err) = (c.stdout.take().unwrap(), c.stderr.take().unwrap());
                let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
                let (o, e, status) = tokio::join!(out.read_to_end(&mut stdout), err.read_to_end(&mut stderr), c.wait());
                o.and(e).expect("read the output");
                Output { status: status.expect("exit status"), stdout, stderr }
            }),
        }
    }

    /// Start `argv`, wait at most `limit`; kill it if it is still running then.
    fn run_bounded(&self, spec: &SandboxSpec, argv: &[&str], limit: Duration) -> Option<ExitStatus> {
        match self {
            Self::Wrapper => wait_bounded(&mut command(spec, argv).spawn().unwrap(), limit),
            Self::Spawner { rt, spawner } => rt.block_on(async {
                let mut req = request(spec, argv, &spec.task_dir);
                (req.stdout, req.stderr) = (ChildIo::Null, ChildIo::Null);
                let mut c = spawner.spawn(req).await.expect("spawn through the spawner");
                match tokio::time::timeout(limit, c.wait()).await {
                    Ok(status) => Some(status.expect("exit status")),
                    Err(_) => {
                        let _ = c.start_kill();
                        let _ = c.wait().await;
                        None
                    }
                }
            }),
        }
    }
}

/// What `command` runs, as a spawn request.
fn request(spec: &SandboxSpec, argv: &[&str], dir: &Path) -> SpawnRequest {
    let mut r = SpawnRequest::new(spec.clone(), argv[0]);
    r.args = argv[1..].iter().map(Into::into).collect();
    r.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    r.cwd = dir.to_path_buf();
    (r.stdout, r.stderr) = (ChildIo::Piped, ChildIo::Piped);
    r
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
    for r in [Runner::Wrapper, Runner::spawner(Path::new(TASK_EXEC))] {
        let f = Fixture::new();
        let o = r.sh(&f.spec(), "echo ok > f && cat f && cat /etc/ld.so.cache > /dev/null && echo done");
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\ndone\n");
        let o = r.run(&f.spec(), &["/nonexistent/program"]);
        assert_eq!(o.status.code(), Some(127), "{}", show(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains("cannot execute"));
        let mut spec = f.spec();
        spec.task_dir = f.task.join("missing");
        let o = r.run_in(&spec, &["/bin/true"], &f.task);
        assert_eq!(o.status.code(), Some(125), "a spec that cannot be applied runs nothing: {}", show(&o));
    }
}

#[test]
fn attack_suite() {
    suite(&Runner::Wrapper, "sandbox");
}

#[test]
fn attack_suite_spawner() {
    suite(&Runner::spawner(Path::new(TASK_EXEC)), "sandbox-spawner");
}

fn suite(r: &Runner, name: &str) {
    let f = Fixture::new();
    let pre = preflight();
    println!("preflight: {pre}");
    let mut t = Tally::default();
    filesystem_attacks(r, &f, &mut t);
    network_attack(r, &f, &pre, &mut t);
    signal_attack(r, &f, &pre, &mut t);
    rlimit_attacks(r, &f, &mut t);
    capability_attacks(r, &f, &mut t);
    fork_bomb(matches!(r, Runner::Spawner { .. }), &mut t);
    t.finish(name);
}

fn filesystem_attacks(r: &Runner, f: &Fixture, t: &mut Tally) {
    let spec = f.spec();
    let tmp_target = PathBuf::from(format!("/tmp/machina-attack-{}", std::process::id()));
    let o = r.sh(&spec, &format!("echo x > {}", tmp_target.display()));
    t.attack("write /tmp outside the task dir", !tmp_target.exists(), show(&o));
    let _ = std::fs::remove_file(&tmp_target);

    let o = r.sh(&spec, "echo x > ../../../planted");
    t.attack("write into the state dir", !f.state.join("planted").exists(), show(&o));

    let o = r.sh(&spec, &format!("echo x >> {}", f.ledger.display()));
    let intact = std::fs::read_to_string(&f.ledger).unwrap() == SECRET;
    t.attack("append to the ledger", intact, show(&o));

    let o = r.run(&spec, &["/bin/cat", f.ledger.to_str().unwrap()]);
    t.attack("read the ledger", !leaks(&o), show(&o));

    let o = r.run(&spec, &["/bin/cat", "/etc/shadow"]);
    t.attack("read /etc/shadow", !o.status.success() && o.stdout.is_empty(), show(&o));

    std::os::unix::fs::symlink(&f.ledger, f.task.join("planted-link")).unwrap();
    let o = r.run(&spec, &["/bin/cat", "planted-link"]);
    t.attack("follow a symlink planted in the task dir", !leaks(&o), show(&o));

    let o = r.sh(&spec, &format!("ln -s {} own-link; cat own-link", f.ledger.display()));
    t.attack("create and follow a symlink out", !leaks(&o), show(&o));

    let o = r.sh(&spec, &format!("ln {} hard; cat hard", f.ledger.display()));
    t.attack("hard-link the ledger into the task dir", !leaks(&o), show(&o));

    let o = r.sh(&spec, &format!("mv {} stolen; cat stolen", f.ledger.display()));
    t.attack("move the ledger into the task dir", !leaks(&o) && f.ledger.exists(), show(&o));

    let o = r.run(&spec, &["/bin/ls", "/"]);
    t.attack("list the root directory", !o.status.success(), show(&o));
}

fn leaks(o: &Output) -> bool {
    String::from_utf8_lossy(&o.stdout).contains(SECRET)
}

fn network_attack(r: &Runner, f: &Fixture, pre: &machina_sandbox::Preflight, t: &mut Tally) {
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
        let o = r.run(&spec, &["/bin/bash", "-c", &format!("echo hi > /dev/tcp/127.0.0.1/{port}")]);
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

fn signal_attack(r: &Runner, f: &Fixture, pre: &machina_sandbox::Preflight, t: &mut Tally) {
    if !pre.landlock_scopes {
        println!("skipped: signal scoping needs landlock ABI 6, this kernel has {}", pre.landlock_abi);
        return;
    }
    let mut victim = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let o = r.run(&f.spec(), &["/bin/kill", "-KILL", &victim.id().to_string()]);
    std::thread::sleep(Duration::from_millis(50));
    let alive = victim.try_wait().unwrap().is_none();
    t.attack("kill a process outside the sandbox", alive, show(&o));
    let _ = victim.kill();
    let _ = victim.wait();
}

fn rlimit_attacks(r: &Runner, f: &Fixture, t: &mut Tally) {
    let mut spec = f.spec();
    spec.rlimits =
        Rlimits { cpu_secs: 1, address_space_bytes: 256 << 20, file_size_bytes: 1 << 20, ..Rlimits::default() };

    let o = r.run(&spec, &["/bin/dd", "if=/dev/zero", "of=big", "bs=64k", "count=64"]);
    let size = std::fs::metadata(f.task.join("big")).map(|m| m.len()).unwrap_or(0);
    let blocked = size <= 1 << 20 && (o.status.signal() == Some(SIGXFSZ) || !o.status.success());
    t.attack("write a file beyond file_size_bytes", blocked, format!("size {size}, {}", show(&o)));

    let o = r.run(&spec, &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"]);
    assert!(o.status.success(), "control: a small buffer is fine: {}", show(&o));
    let o = r.run(&spec, &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=512M", "count=1"]);
    t.attack("allocate beyond address_space_bytes", !o.status.success(), show(&o));

    let status = r.run_bounded(&spec, &["/bin/sh", "-c", "while :; do :; done"], Duration::from_secs(20));
    let killed = status.and_then(|s| s.signal()).is_some_and(|s| s == SIGXCPU || s == SIGKILL);
    t.attack("spin the CPU beyond cpu_secs", killed, format!("{status:?}"));
}

fn capability_attacks(r: &Runner, f: &Fixture, t: &mut Tally) {
    let mut spec = f.spec();
    spec.read_only.push("/proc".into());
    let o = r.run(&spec, &["/bin/grep", "^Cap", "/proc/self/status"]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let all_zero = text.lines().count() == 5 && text.lines().all(|l| l.ends_with("0000000000000000"));
    t.attack("hold any capability (CapInh/Prm/Eff/Bnd/Amb)", all_zero, show(&o));

    std::fs::write(f.task.join("mine"), "x").unwrap();
    let o = r.run(&spec, &["/bin/chown", "65534", "mine"]);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(f.task.join("mine")).unwrap());
    t.attack("chown a file to another user (CAP_CHOWN)", uid != 65534, show(&o));

    let o = r.run(&spec, &["/usr/bin/setpriv", "--reuid=65534", "/bin/true"]);
    t.attack("switch uid (CAP_SETUID)", !o.status.success(), show(&o));
}

/// RLIMIT_NPROC counts the processes of a uid and never applies to root, so the bomb runs
/// as nobody (setpriv) — possible only when the suite runs as root. Through the spawner,
/// the spawner itself runs as nobody (started by a script that setprivs to it).
fn fork_bomb(through_spawner: bool, t: &mut Tally) {
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
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", TASK_EXEC];
    let o = if through_spawner {
        let launcher = root.path().join("serve-as-nobody");
        std::fs::write(&launcher, format!("#!/bin/sh\nexec /usr/bin/setpriv {} \"$@\"\n", nobody.join(" "))).unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        Runner::spawner(&launcher).run(&spec, &["/bin/sh", "-c", script])
    } else {
        let c = command(&spec, &["/bin/sh", "-c", script]);
        let mut args: Vec<std::ffi::OsString> = nobody.iter().map(Into::into).collect();
        args.extend(c.get_args().map(Into::into));
        let mut bomb = Command::new("/usr/bin/setpriv");
        bomb.args(args).env_clear().env("PATH", "/usr/bin:/bin").current_dir(&task).stdin(Stdio::null());
        bomb.output().unwrap()
    };
    let err = String::from_utf8_lossy(&o.stderr);
    let refused = err.contains("fork") || err.contains("Resource temporarily unavailable");
    t.attack("fork bomb beyond processes (as uid 65534)", refused, show(&o));
}
