//! Attack suite for the shell tool's allowlist: real commands through the worker's shell
//! tool and the real `machina-task-exec`, each trying to run something other than the
//! exact file an allowlist entry named when the policy was built — by another name, by a
//! path trick, or by replacing the file afterwards. Every attack must fail; controls show
//! the allowed file runs. Every attack runs twice: with tasks started through the exec
//! wrapper, and through the wrapper's spawner (`--serve`, the worker's default). Prints
//! `attack-suite allowlist: N tried, N blocked` and `attack-suite allowlist-spawner: …`.

mod common;

use common::tally::Tally;

use machina_core::ErrCode;
use machina_core::config::ShellSettings;
use machina_worker::shell::{RunLimits, ShellOutcome, ShellPolicy, run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TASK_EXEC: &str = env!("CARGO_BIN_EXE_machina-task-exec");

struct Fixture {
    _root: tempfile::TempDir,
    bin: PathBuf,
    task: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (bin, task) = (tmp.path().join("bin"), tmp.path().join("task"));
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&task).unwrap();
        Self { _root: tmp, bin, task }
    }

    /// A copy of a system program in the bin dir.
    fn copy_of(&self, name: &str, system: &str) -> PathBuf {
        let p = self.bin.join(name);
        std::fs::copy(system, &p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }
}

/// How tasks are started: through the exec wrapper, or through its spawner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Wrapper,
    Spawner,
}

fn policy(via: Via, allow: &[&Path]) -> ShellPolicy {
    let s = ShellSettings { allow: allow.iter().map(|p| p.to_path_buf()).collect(), env_allow: vec![] };
    ShellPolicy::new(&s).with_wrapper(Some(TASK_EXEC.into())).with_spawner(via == Via::Spawner)
}

/// After a run under `p`: it went the way `via` says (a spawner that failed to start
/// would silently fall back to the wrapper).
async fn assert_via(p: &ShellPolicy, via: Via) {
    assert_eq!(p.spawner_pid().await.is_some(), via == Via::Spawner, "tasks must run via the {via:?}");
}

async fn sh(p: &ShellPolicy, argv: &[&str], dir: &Path) -> ShellOutcome {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    let limits = RunLimits { timeout: Duration::from_secs(10), output_cap: 64 << 10 };
    run(p, &argv, dir, &[], &limits, Default::default()).await
}

fn show(o: &ShellOutcome) -> String {
    format!(
        "{:?} exit {:?}, stdout {:?}, stderr {:?}",
        o.err_code,
        o.exit_status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Refused before anything ran.
fn denied(o: &ShellOutcome) -> bool {
    o.err_code == Some(ErrCode::PolicyDenied) && o.stdout.is_empty()
}

/// Refused by the wrapper's pin check: the file was opened, found different, and not run.
fn denied_by_wrapper(o: &ShellOutcome) -> bool {
    let err = String::from_utf8_lossy(&o.stderr);
    denied(o) && err.starts_with("machina-task-exec: ") && err.contains("is not the pinned file")
}

#[tokio::test]
async fn controls_allowed_binaries_run() {
    for via in [Via::Wrapper, Via::Spawner] {
        let f = Fixture::new();
        let copy = f.copy_of("echo", "/usr/bin/echo");
        let p = policy(via, &[Path::new("/usr/bin/echo"), &copy]);
        for argv0 in ["/usr/bin/echo", copy.to_str().unwrap()] {
            let o = sh(&p, &[argv0, "ok"], &f.task).await;
            assert_eq!((o.err_code, o.stdout.as_slice()), (None, &b"ok\n"[..]), "{via:?} {argv0}: {}", show(&o));
        }
        assert_via(&p, via).await;
        // A replaced binary is accepted again once the policy is rebuilt (a worker restart):
        // the refusal below is the pin, not a broken copy.
        let swap = f.copy_of("swap", "/usr/bin/printf");
        std::fs::rename(&swap, &copy).unwrap();
        assert!(denied_by_wrapper(&sh(&p, &[copy.to_str().unwrap(), "x"], &f.task).await), "{via:?}");
        let o = sh(&policy(via, &[&copy]), &[copy.to_str().unwrap(), "again"], &f.task).await;
        assert_eq!(o.stdout, b"again", "{via:?}: {}", show(&o));
    }
}

#[tokio::test]
async fn attack_suite() {
    suite(Via::Wrapper, "allowlist").await;
}

#[tokio::test]
async fn attack_suite_spawner() {
    suite(Via::Spawner, "allowlist-spawner").await;
}

async fn suite(via: Via, name: &str) {
    let f = Fixture::new();
    let mut t = Tally::default();
    name_attacks(&f, via, &mut t).await;
    replacement_attacks(&f, via, &mut t).await;
    t.finish(name);
}

async fn name_attacks(f: &Fixture, via: Via, t: &mut Tally) {
    let p = policy(via, &[Path::new("/usr/bin/true"), Path::new("/usr/bin/echo")]);
    let dir = &f.task;

    let o = sh(&p, &["/usr/bin/id"], dir).await;
    t.attack("a name not on the list", denied(&o), show(&o));

    let link = f.bin.join("true");
    std::os::unix::fs::symlink("/usr/bin/true", &link).unwrap();
    let o = sh(&p, &[link.to_str().unwrap()], dir).await;
    t.attack("a symlink (not itself allowed) to an allowed file", denied(&o), show(&o));
    let link = f.bin.join("sneaky-id");
    std::os::unix::fs::symlink("/usr/bin/id", &link).unwrap();
    let o = sh(&p, &[link.to_str().unwrap()], dir).await;
    t.attack("a symlink to a file not on the list", denied(&o), show(&o));

    for argv0 in ["usr/bin/true", "./true", "../../usr/bin/true", "bin/true"] {
        let o = sh(&p, &[argv0], dir).await;
        t.attack(&format!("the relative path {argv0:?}"), denied(&o), show(&o));
    }
    for argv0 in ["/usr/bin/../bin/sh", "/usr/bin/../bin/true", "/usr/bin/true/", "/usr/bin/true/."] {
        let o = sh(&p, &[argv0, "-c", "echo ESCAPED"], dir).await;
        t.attack(&format!("the path trick {argv0:?}"), denied(&o), show(&o));
    }

    // PATH never applies: a bare name is refused, even with a `true` planted in the task dir.
    std::fs::copy("/usr/bin/id", dir.join("true")).unwrap();
    for argv0 in ["true", "echo"] {
        let o = sh(&p, &[argv0], dir).await;
        t.attack(&format!("the bare name {argv0:?} (PATH lookup)"), denied(&o), show(&o));
    }
}

async fn replacement_attacks(f: &Fixture, via: Via, t: &mut Tally) {
    let dir = &f.task;
    let tool = f.copy_of("tool", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    let o = sh(&p, &[argv0], dir).await;
    assert_eq!(o.err_code, None, "control: the allowlisted copy runs: {}", show(&o));
    assert_via(&p, via).await;

    let swap = f.copy_of("swap", "/usr/bin/id");
    std::fs::rename(&swap, &tool).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("replace the allowlisted binary by rename", denied_by_wrapper(&o), show(&o));

    // Back to the pinned content under a new inode: still not the pinned file.
    std::fs::remove_file(&tool).unwrap();
    f.copy_of("tool", "/usr/bin/true");
    let o = sh(&p, &[argv0], dir).await;
    t.attack("replace it by an identical copy (new inode)", denied_by_wrapper(&o), show(&o));

    let tool = f.copy_of("inplace", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    std::fs::write(&tool, std::fs::read("/usr/bin/id").unwrap()).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("overwrite the allowlisted binary in place", denied_by_wrapper(&o), show(&o));

    let tool = f.copy_of("appended", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&tool)
        .and_then(|mut w| std::io::Write::write_all(&mut w, b"\0"))
        .unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("append to the allowlisted binary", denied_by_wrapper(&o), show(&o));

    let tool = f.copy_of("chmodded", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("change the allowlisted binary's mode (setuid bit)", denied_by_wrapper(&o), show(&o));

    let tool = f.copy_of("relinked", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    std::fs::remove_file(&tool).unwrap();
    std::os::unix::fs::symlink("/usr/bin/id", &tool).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("replace the allowlisted binary by a symlink elsewhere", denied(&o), show(&o));

    let tool = f.copy_of("fifo", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]);
    std::fs::remove_file(&tool).unwrap();
    nix::unistd::mkfifo(&tool, nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("replace the allowlisted binary by a FIFO (hang the wrapper)", denied(&o) && o.wall_ms < 5_000, show(&o));

    let tool = f.copy_of("unconfined", "/usr/bin/true");
    let argv0 = tool.to_str().unwrap();
    let p = policy(via, &[&tool]).with_wrapper(None);
    let swap = f.copy_of("swap", "/usr/bin/id");
    std::fs::rename(&swap, &tool).unwrap();
    let o = sh(&p, &[argv0], dir).await;
    t.attack("replace the binary when running unconfined (worker-side check)", denied(&o), show(&o));
}
