//! Real landlock for the spec's execution and task-directory rules and for `--verify`:
//! this test binary re-executes itself as the wrapper (`harness = false`, so nothing but
//! the wrapped command writes to stdout), applies the spec, and execs real programs.

use machina_sandbox::{EXIT_VERIFY_FAILED, Identity, SandboxSpec, Verify, preflight};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Output, Stdio};

/// Set when this binary runs as the wrapper.
const AS_WRAPPER: &str = "MACHINA_CONFINE_TEST_AS_WRAPPER";
/// Exit status of `env` (and shells) when the command was found but could not be run.
const EXIT_CANNOT_RUN: i32 = 126;

fn main() -> ExitCode {
    if std::env::var_os(AS_WRAPPER).is_some() {
        return machina_sandbox::exec_main_with(std::env::args_os().skip(1).collect());
    }
    let pre = preflight();
    if pre.landlock_abi == 0 {
        println!("skipped: landlock is not supported by this kernel");
        return ExitCode::SUCCESS;
    }
    let cases: [(&str, Case); 7] = [
        ("default spec executes beneath read_only", default_spec_executes_system_tools),
        ("exec_paths limits execution to the listed files", exec_paths_limit_execution),
        ("a script runs pinned by descriptor, its interpreter listed", pinned_script_runs),
        ("the task dir is never executable with exec_paths", task_dir_not_executable),
        ("task_dir_writable=false leaves the task dir read-only", read_only_task_dir),
        ("--verify refuses swapped, modified and odd files", verify_refuses_other_files),
        ("a pinned program starts with SIGPIPE at its default", pinned_program_gets_default_sigpipe),
    ];
    for (name, case) in cases {
        case(&Fixture::new());
        println!("ok: {name}");
    }
    ExitCode::SUCCESS
}

/// One check, run on a fresh fixture.
type Case = fn(&Fixture);

struct Fixture {
    _root: tempfile::TempDir,
    /// Where test programs live (outside the task dir, outside the default read-only roots).
    bin: PathBuf,
    task: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        let task = root.path().join("task");
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&task).unwrap();
        Self { bin, task, _root: root }
    }

    fn spec(&self) -> SandboxSpec {
        SandboxSpec::new(&self.task)
    }

    /// Copy `from` into the bin dir as `name`, executable.
    fn install(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.bin.join(name);
        std::fs::copy(from, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        to
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let to = self.bin.join(name);
        std::fs::write(&to, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        to
    }
}

fn wrap(spec: &SandboxSpec, verify: Option<&Verify>, argv: &[&str]) -> Output {
    let mut args: Vec<OsString> = vec!["--spec-json".into(), serde_json::to_string(spec).unwrap().into()];
    if let Some(v) = verify {
        args.extend(["--verify".into(), v.to_string().into()]);
    }
    args.push("--".into());
    args.extend(argv.iter().map(OsString::from));
    Command::new(std::env::current_exe().unwrap())
        .args(args)
        .env_clear()
        .env(AS_WRAPPER, "1")
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&spec.task_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn sha256(path: &Path) -> Verify {
    Verify::Sha256(Sha256::digest(std::fs::read(path).unwrap()).into())
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn default_spec_executes_system_tools(f: &Fixture) {
    let o = wrap(&f.spec(), None, &["/usr/bin/env", "/usr/bin/id", "-u"]);
    assert!(o.status.success(), "{}", show(&o));
}

fn exec_paths_limit_execution(f: &Fixture) {
    let env = f.install(Path::new("/usr/bin/env"), "env");
    let mut spec = f.spec();
    spec.exec_paths = Some(vec![env.clone()]);
    let pin = sha256(&env);
    let e = env.to_str().unwrap();
    let o = wrap(&spec, Some(&pin), &[e, "X=1"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("X=1"), "control: {}", show(&o));
    for target in ["/usr/bin/id", "/bin/sh", "/usr/bin/env"] {
        let o = wrap(&spec, Some(&pin), &[e, target]);
        assert_eq!(o.status.code(), Some(EXIT_CANNOT_RUN), "{target} must not be executable: {}", show(&o));
    }
    // Still readable: only execution is withheld from read_only.
    let o = wrap(&spec, None, &[e, "X=1"]);
    assert!(o.status.success(), "{}", show(&o));
    let mut spec = f.spec();
    spec.exec_paths = Some(vec![env.clone(), "/usr/bin".into()]);
    let o = wrap(&spec, Some(&pin), &[e, "/usr/bin/id", "-u"]);
    assert!(o.status.success(), "listed directories are executable: {}", show(&o));
}

fn pinned_script_runs(f: &Fixture) {
    let script = f.script("plugin", r#"echo "args:$*"; /usr/bin/id -u && echo RAN-ID"#);
    let mut spec = f.spec();
    spec.exec_paths = Some(vec![script.clone(), "/bin/sh".into()]);
    let o = wrap(&spec, Some(&sha256(&script)), &[script.to_str().unwrap(), "a", "b"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("args:a b"), "the script runs from its descriptor: {}", show(&o));
    assert!(!out.contains("RAN-ID"), "the script must not execute /usr/bin/id: {}", show(&o));
}

fn task_dir_not_executable(f: &Fixture) {
    let env = f.install(Path::new("/usr/bin/env"), "env");
    std::fs::copy("/usr/bin/true", f.task.join("dropped")).unwrap();
    let mut spec = f.spec();
    spec.exec_paths = Some(vec![env.clone()]);
    let o = wrap(&spec, None, &[env.to_str().unwrap(), "./dropped"]);
    assert_eq!(o.status.code(), Some(EXIT_CANNOT_RUN), "{}", show(&o));
    let o = wrap(&f.spec(), None, &["./dropped"]);
    assert!(o.status.success(), "control: without exec_paths the task dir is executable: {}", show(&o));
}

fn read_only_task_dir(f: &Fixture) {
    std::fs::write(f.task.join("input"), "data\n").unwrap();
    let mut spec = f.spec();
    spec.task_dir_writable = false;
    let o = wrap(&spec, None, &["/bin/sh", "-c", "cat input; echo x > output; echo x >> input"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "data\n", "{}", show(&o));
    assert!(!f.task.join("output").exists(), "created a file in a read-only task dir");
    assert_eq!(std::fs::read_to_string(f.task.join("input")).unwrap(), "data\n");
    let o = wrap(&f.spec(), None, &["/bin/sh", "-c", "echo x > output"]);
    assert!(o.status.success() && f.task.join("output").exists(), "control: {}", show(&o));
}

fn verify_refuses_other_files(f: &Fixture) {
    let prog = f.install(Path::new("/usr/bin/true"), "prog");
    let p = prog.to_str().unwrap();
    let mut spec = f.spec();
    spec.exec_paths = Some(vec![f.bin.clone()]);
    let sha = sha256(&prog);
    let stat = Verify::Stat(Identity::of(&std::fs::metadata(&prog).unwrap()));
    for v in [&sha, &stat] {
        let o = wrap(&spec, Some(v), &[p]);
        assert!(o.status.success(), "control {v}: {}", show(&o));
    }
    let refused = |o: &Output, what: &str| {
        assert_eq!(o.status.code(), Some(i32::from(EXIT_VERIFY_FAILED)), "{what}: {}", show(o));
        assert!(String::from_utf8_lossy(&o.stderr).starts_with("machina-task-exec: "), "{what}: {}", show(o));
    };
    // Replaced by rename with another program.
    let other = f.install(Path::new("/usr/bin/id"), "other");
    std::fs::rename(&other, &prog).unwrap();
    for v in [&sha, &stat] {
        refused(&wrap(&spec, Some(v), &[p]), "renamed over");
    }
    // Modified in place: the inode stays, content and times move.
    std::fs::copy("/usr/bin/true", &prog).unwrap();
    let stat = Verify::Stat(Identity::of(&std::fs::metadata(&prog).unwrap()));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&prog)
        .and_then(|mut w| std::io::Write::write_all(&mut w, b"\0"))
        .unwrap();
    for v in [&sha, &stat] {
        refused(&wrap(&spec, Some(v), &[p]), "modified in place");
    }
    // A FIFO at the path must neither hang the wrapper nor pass.
    std::fs::remove_file(&prog).unwrap();
    nix::unistd::mkfifo(&prog, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    refused(&wrap(&spec, Some(&sha), &[p]), "fifo");
    let o = wrap(&spec, Some(&sha), &[f.bin.join("missing").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(127), "{}", show(&o));
}

/// The Rust runtime ignores SIGPIPE, and an ignored signal stays ignored across exec: the
/// wrapper must restore it before it execs the pinned file (std's exec does so for the rest).
fn pinned_program_gets_default_sigpipe(f: &Fixture) {
    let mut spec = f.spec();
    spec.read_only.push("/proc".into());
    let grep = Path::new("/bin/grep");
    let o = wrap(&spec, Some(&sha256(grep)), &["/bin/grep", "^SigIgn", "/proc/self/status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let ignored = out.trim().rsplit('\t').next().and_then(|m| u64::from_str_radix(m, 16).ok());
    let sigpipe = 1 << (nix::sys::signal::Signal::SIGPIPE as u64 - 1);
    assert_eq!(ignored.map(|m| m & sigpipe), Some(0), "{}", show(&o));
}
