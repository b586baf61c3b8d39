//! The `shell` tool: an allowlisted executable run with an argv (never a shell
//! string), a cleared environment, its own directory and process group, a
//! wall-clock timeout that kills the whole group, and capped output.
//!
//! Confinement that must happen in the child (new session, landlock,
//! capabilities, rlimits) is applied in a child of the worker's spawner
//! (`machina-task-exec --serve`, machina-sandbox): a small process started once,
//! which forks the task, confines the child and execs the command — no fork of
//! the large worker, and no second exec. The spawner is the task's parent and
//! reports its exit status. Without a spawner (it cannot be started, the request
//! is too large for it), the worker posix_spawns the small `machina-task-exec`
//! wrapper in front of argv instead, which confines itself and execs the command.
//! Either way the task's pid leads its own session and process group, the group
//! the worker kills.
//!
//! Each allowlisted file is pinned when the policy is built: its canonical path and its
//! identity (device, inode, size, mtime, ctime). The spawner's child (or the wrapper, with
//! `--verify stat:…`) opens the file, compares and execs that open file, so a binary
//! replaced (by rename or in place) after the worker started is refused — restart the
//! worker to accept an upgrade.
//! [`launch`] is the spawn/timeout/capture machinery the plugin tool shares.

use machina_core::ErrCode;
use machina_core::config::{SandboxSettings, ShellSettings};
use machina_sandbox::{
    ChildIo, EXIT_EXEC_FAILED, EXIT_SANDBOX_REFUSED, EXIT_VERIFY_FAILED, Identity, LazySpawner, Required, Rlimits,
    SandboxSpec, SpawnError, SpawnRequest, SpawnedChild, Verify, WRAPPER_PREFIX,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// How long output is still read after the task's process group is gone.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// PATH given to tasks.
const TASK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Environment override of the wrapper's path (tests, development trees).
pub const TASK_EXEC_ENV: &str = "MACHINA_TASK_EXEC";

/// Where the package installs the wrapper, used when it is not beside the worker.
pub const SYSTEM_TASK_EXEC: &str = "/usr/libexec/machina/machina-task-exec";

/// Address-space limit of a plugin that declares MEMORY, unless configured otherwise.
pub const DEFAULT_PLUGIN_MEMORY_BYTES: u64 = 4 << 30;

/// The allowlist, resolved to canonical paths once, and how tasks are confined.
#[derive(Debug, Clone)]
pub struct ShellPolicy {
    /// Entry as configured → the file it resolved to at startup.
    allowed: BTreeMap<PathBuf, Pinned>,
    pub(crate) env_allow: Vec<String>,
    /// The sandboxing exec wrapper; None runs commands unconfined (refused when required).
    pub(crate) wrapper: Option<PathBuf>,
    /// The wrapper's `--serve` mode, started on first use and shared by every clone of the
    /// policy: one spawner per worker process. None: always the wrapper.
    spawner: Option<Arc<LazySpawner>>,
    pub(crate) rlimits: Rlimits,
    required: bool,
    /// RLIMIT_AS of plugins that declare MEMORY.
    pub(crate) plugin_memory_bytes: u64,
}

/// An allowlisted file as it was when the policy was built.
#[derive(Debug, Clone)]
struct Pinned {
    canonical: PathBuf,
    identity: Identity,
}

/// What one run of the tool produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellOutcome {
    /// None on success.
    pub err_code: Option<ErrCode>,
    /// Exit code, or 128 + signal number.
    pub exit_status: Option<i32>,
    /// Captured stdout (capped).
    pub stdout: Vec<u8>,
    /// Captured stderr (capped), or the policy/boot error message.
    pub stderr: Vec<u8>,
    /// Wall time.
    pub wall_ms: i64,
}

impl ShellOutcome {
    pub(crate) fn refused(code: ErrCode, message: String) -> Self {
        Self { err_code: Some(code), exit_status: None, stdout: Vec::new(), stderr: message.into_bytes(), wall_ms: 0 }
    }
}

impl ShellPolicy {
    /// Resolve and pin the allowlist; entries that do not exist are dropped with a warning.
    pub fn new(s: &ShellSettings) -> Self {
        let mut allowed = BTreeMap::new();
        for p in &s.allow {
            let pinned = std::fs::canonicalize(p)
                .and_then(|c| std::fs::metadata(&c).map(|m| Pinned { identity: Identity::of(&m), canonical: c }));
            match pinned {
                Ok(pinned) => {
                    allowed.insert(p.clone(), pinned);
                }
                Err(e) => tracing::warn!(path = %p.display(), "shell allowlist entry ignored: {e}"),
            }
        }
        let wrapper = locate_wrapper();
        match &wrapper {
            Some(w) => tracing::info!(wrapper = %w.display(), "tasks are sandboxed: {}", machina_sandbox::preflight()),
            None => tracing::warn!("machina-task-exec not found (set {TASK_EXEC_ENV}): tasks run unconfined"),
        }
        Self {
            allowed,
            env_allow: s.env_allow.clone(),
            spawner: wrapper.as_ref().map(|w| Arc::new(LazySpawner::new(w))),
            wrapper,
            rlimits: Rlimits::default(),
            required: false,
            plugin_memory_bytes: DEFAULT_PLUGIN_MEMORY_BYTES,
        }
    }

    /// Apply the `[sandbox]` settings.
    pub fn with_sandbox(mut self, s: &SandboxSettings) -> Self {
        self.rlimits = Rlimits {
            cpu_secs: s.cpu_secs,
            address_space_bytes: s.address_space_bytes,
            file_size_bytes: s.file_size_bytes,
            open_files: s.open_files,
            processes: s.processes,
        };
        self.required = s.required;
        self
    }

    /// Use this wrapper (None: run commands unconfined), and its spawner.
    pub fn with_wrapper(mut self, wrapper: Option<PathBuf>) -> Self {
        self.spawner = wrapper.as_ref().map(|w| Arc::new(LazySpawner::new(w)));
        self.wrapper = wrapper;
        self
    }

    /// Start tasks through the wrapper's spawner (the default) or always through the wrapper.
    pub fn with_spawner(mut self, enabled: bool) -> Self {
        self.spawner = self.wrapper.as_ref().filter(|_| enabled).map(|w| Arc::new(LazySpawner::new(w)));
        self
    }

    /// Start the spawner now rather than on the first task (a failure is logged once, and
    /// tasks then start through the wrapper).
    pub async fn start_spawner(&self) {
        if let Some(s) = &self.spawner {
            let _ = s.get().await;
        }
    }

    /// The pid of the spawner tasks start through, once one is running.
    pub async fn spawner_pid(&self) -> Option<u32> {
        match &self.spawner {
            Some(s) => s.pid().await,
            None => None,
        }
    }

    /// Address-space limit of plugins that declare MEMORY (default [`DEFAULT_PLUGIN_MEMORY_BYTES`]).
    pub fn with_plugin_memory_bytes(mut self, bytes: u64) -> Self {
        self.plugin_memory_bytes = bytes;
        self
    }

    /// The sandbox spec of a task run in `dir` (the shell tool never has network). `exe`
    /// is readable and executable even outside the default read-only roots: the wrapper
    /// opens it under landlock.
    fn spec(&self, dir: &Path, exe: &Path) -> SandboxSpec {
        let mut spec = SandboxSpec::new(dir);
        spec.read_only.push(exe.to_path_buf());
        spec.rlimits = self.rlimits;
        spec.required = if self.required { Required::all() } else { Required::default() };
        spec
    }

    /// The canonical executable for `argv0`, if the policy allows it.
    ///
    /// argv0 must be an allowlist entry as written, and must still resolve to the file
    /// that entry resolved to at startup. Matching the name (not only the target) keeps
    /// a symlink to a multi-call binary from allowing every other name of that binary.
    /// Whether the file is still the one pinned is checked at exec (see the module docs).
    pub fn resolve(&self, argv0: &str) -> Result<PathBuf, String> {
        self.pinned(argv0).map(|p| p.canonical.clone())
    }

    fn pinned(&self, argv0: &str) -> Result<&Pinned, String> {
        let p = Path::new(argv0);
        if !p.is_absolute() {
            return Err(format!("executable {argv0:?} must be an absolute path"));
        }
        let Some(pinned) = self.allowed.get(p) else {
            return Err(format!("executable {argv0:?} is not on the allowlist (tools.shell.allow)"));
        };
        match std::fs::canonicalize(p) {
            Ok(now) if now == pinned.canonical => Ok(pinned),
            Ok(now) => Err(format!(
                "executable {argv0:?} now resolves to {}, not {} as when the worker started",
                now.display(),
                pinned.canonical.display()
            )),
            Err(e) => Err(format!("executable {argv0:?} cannot be resolved: {e}")),
        }
    }
}

impl Pinned {
    /// The worker-side identity check of unconfined runs. Best effort: the file can still
    /// be swapped between this stat and the exec; the wrapper's check has no such window.
    fn check_unconfined(&self) -> Result<(), String> {
        let now = std::fs::metadata(&self.canonical).map(|m| Identity::of(&m));
        match now {
            Ok(id) if id == self.identity => Ok(()),
            Ok(id) => Err(format!(
                "executable {} was replaced or modified after the worker started (expected stat:{}, actual \
                 stat:{id}); restart the worker to allow the new file",
                self.canonical.display(),
                self.identity
            )),
            Err(e) => Err(format!("executable {}: {e}", self.canonical.display())),
        }
    }
}

/// The wrapper: `$MACHINA_TASK_EXEC`, else beside this executable (or beside the directory
/// of a cargo test binary, `target/*/deps`), else [`SYSTEM_TASK_EXEC`]; None if none exists.
pub fn locate_wrapper() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(TASK_EXEC_ENV) {
        return Some(PathBuf::from(p));
    }
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf));
    let mut candidates = Vec::new();
    if let Some(d) = exe_dir {
        candidates.push(d.join("machina-task-exec"));
        if d.ends_with("deps")
            && let Some(up) = d.parent()
        {
            candidates.push(up.join("machina-task-exec"));
        }
    }
    candidates.push(PathBuf::from(SYSTEM_TASK_EXEC));
    candidates.into_iter().find(|p| p.is_file())
}

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct RunLimits {
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Bytes kept of stdout and of stderr.
    pub output_cap: usize,
}

/// Run `argv` in `dir`. `cancel` kills the process group early (run canceled, lease lost).
pub async fn run(
    policy: &ShellPolicy,
    argv: &[String],
    dir: &Path,
    extra_env: &[(&str, String)],
    limits: &RunLimits,
    cancel: CancellationToken,
) -> ShellOutcome {
    let Some(argv0) = argv.first() else {
        return ShellOutcome::refused(ErrCode::PolicyDenied, "empty argv".into());
    };
    let pinned = match policy.pinned(argv0) {
        Ok(p) => p,
        Err(m) => return ShellOutcome::refused(ErrCode::PolicyDenied, m),
    };
    let confinement = match &policy.wrapper {
        Some(wrapper) => Confinement::Wrapped {
            wrapper: wrapper.clone(),
            spec: Box::new(policy.spec(dir, &pinned.canonical)),
            verify: Verify::Stat(pinned.identity),
        },
        None if policy.required => {
            return ShellOutcome::refused(
                ErrCode::BootFail,
                format!("sandbox.required is set but machina-task-exec was not found (set {TASK_EXEC_ENV})"),
            );
        }
        None => match pinned.check_unconfined() {
            Ok(()) => Confinement::Unconfined,
            Err(m) => return ShellOutcome::refused(ErrCode::PolicyDenied, m),
        },
    };
    let launch_ = Launch { exe: &pinned.canonical, arg0: argv0, args: &argv[1..], confinement };
    launch(policy, launch_, dir, extra_env, limits, cancel).await
}

/// How a process is started.
pub(crate) enum Confinement {
    /// Through the wrapper: sandboxed by `spec`, the program checked against `verify`.
    Wrapped {
        /// machina-task-exec.
        wrapper: PathBuf,
        /// The sandbox.
        spec: Box<SandboxSpec>,
        /// The pin the wrapper checks on the open file it execs.
        verify: Verify,
    },
    /// Directly, in its own process group (development without the wrapper).
    Unconfined,
}

/// One process to start.
pub(crate) struct Launch<'a> {
    /// The file exec'd.
    pub exe: &'a Path,
    /// argv[0] as the program sees it.
    pub arg0: &'a str,
    /// The rest of argv.
    pub args: &'a [String],
    /// Sandbox or none.
    pub confinement: Confinement,
}

/// Start `l` in `dir` with the task environment (cleared, PATH, HOME, the policy's
/// pass-through variables, `extra_env`), wait for it within `limits`, kill its process
/// group, capture its output and classify the outcome.
pub(crate) async fn launch(
    policy: &ShellPolicy,
    l: Launch<'_>,
    dir: &Path,
    extra_env: &[(&str, String)],
    limits: &RunLimits,
    cancel: CancellationToken,
) -> ShellOutcome {
    let wrapped = matches!(l.confinement, Confinement::Wrapped { .. });
    let started = Instant::now();
    let mut task = match start(policy, l, dir, task_env(policy, dir, extra_env)).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    let pgid = task.pid();
    let deadline = tokio::time::Instant::from_std(started + limits.timeout);
    let stop_reading = CancellationToken::new();
    let (stdout, stderr) = task.take_output();
    let out = tokio::spawn(read_capped(stdout, limits.output_cap, stop_reading.clone()));
    let err = tokio::spawn(read_capped(stderr, limits.output_cap, stop_reading.clone()));
    let mut err_code = None;
    // The spawner died and took the exit status with it.
    let mut lost = None;
    let status = tokio::select! {
        s = task.wait() => s.unwrap_or_else(|e| { lost = Some(e); None }),
        _ = tokio::time::sleep_until(deadline) => { err_code = Some(ErrCode::Timeout); None }
        _ = cancel.cancelled() => { err_code = Some(ErrCode::Canceled); None }
    };
    // Kill the whole group: on timeout/cancel, and after a normal exit to reap
    // anything the task left behind in its group.
    if let Some(pg) = pgid {
        let _ = killpg(pg, Signal::SIGKILL);
    }
    let status = match status {
        Some(s) => Some(s),
        None if lost.is_some() => None,
        None => {
            // The task may not have made its group yet: kill it by pid, then the group
            // again once it is gone, in case it formed in between.
            task.start_kill();
            let s = task.wait().await.unwrap_or_else(|e| {
                lost = Some(e);
                None
            });
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGKILL);
            }
            s
        }
    };
    // The group is gone; what it wrote is in the pipes and arrives at once. A process that
    // left the group (setsid) may still hold them open: read a short grace longer, then stop.
    let grace_end = tokio::time::Instant::now() + OUTPUT_GRACE;
    let stopper = stop_reading.clone();
    let guard = tokio::spawn(async move {
        tokio::time::sleep_until(grace_end).await;
        stopper.cancel();
    });
    let stdout = out.await.unwrap_or_default();
    let mut stderr = err.await.unwrap_or_default();
    guard.abort();
    if stop_reading.is_cancelled() {
        stderr.extend_from_slice(
            b"\n[machina: stopped reading output: a process that left the task's process group still held it open]\n",
        );
    }
    if let Some(e) = lost {
        tracing::error!(error = %e, kind = e.kind(), "a task's exit status was lost with its spawner; its group was killed");
        stderr.extend_from_slice(
            format!("\n[machina: {e}; the task was killed, its exit status is unknown]\n").as_bytes(),
        );
        err_code = err_code.or(Some(ErrCode::BootFail));
    }
    let exit_status = status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
    if err_code.is_none() && exit_status != Some(0) {
        err_code = Some(wrapper_error(wrapped, exit_status, &stderr).unwrap_or(ErrCode::CmdNonzero));
    }
    ShellOutcome { err_code, exit_status, stdout, stderr, wall_ms: started.elapsed().as_millis() as i64 }
}

/// The task's whole environment: PATH, HOME, the policy's pass-through variables as the
/// worker has them, then `extra_env` (a later entry replaces an earlier one), ordered by
/// name as std's `Command` orders it — so both ways of starting a task give the same.
fn task_env(policy: &ShellPolicy, dir: &Path, extra_env: &[(&str, String)]) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".into(), TASK_PATH.into());
    env.insert("HOME".into(), dir.as_os_str().to_owned());
    for k in &policy.env_allow {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.into(), v.into());
        }
    }
    for (k, v) in extra_env {
        env.insert((*k).into(), v.into());
    }
    env
}

/// Start the process: confined through the spawner if there is one that takes the
/// request, else through the wrapper; or unconfined. Err: the outcome of a refusal.
async fn start(
    policy: &ShellPolicy,
    l: Launch<'_>,
    dir: &Path,
    env: BTreeMap<OsString, OsString>,
) -> Result<Task, ShellOutcome> {
    let Launch { exe, arg0, args, confinement } = l;
    let cannot = |e: &dyn std::fmt::Display| {
        ShellOutcome::refused(ErrCode::BootFail, format!("cannot start {}: {e}", exe.display()))
    };
    let mut cmd = match confinement {
        Confinement::Wrapped { wrapper, spec, verify } => {
            if let Some(lazy) = &policy.spawner
                && let Some(spawner) = lazy.get().await
            {
                let mut req = SpawnRequest::new((*spec).clone(), exe);
                req.verify = Some(verify.clone());
                req.arg0 = Some(arg0.into());
                req.args = args.iter().map(OsString::from).collect();
                req.env = env.clone().into_iter().collect();
                req.cwd = dir.to_path_buf();
                (req.stdout, req.stderr) = (ChildIo::Piped, ChildIo::Piped);
                match spawner.spawn(req).await {
                    Ok(child) => return Ok(Task::Spawned(child)),
                    Err(e) if e.use_wrapper() => {
                        tracing::debug!(kind = e.kind(), "{e}; starting the task through the wrapper")
                    }
                    Err(e) => return Err(cannot(&e)),
                }
            }
            // The wrapper calls setsid itself: it must not already lead a group.
            let spec = serde_json::to_string(&spec).map_err(|e| cannot(&format!("sandbox spec: {e}")))?;
            let mut c = tokio::process::Command::new(wrapper);
            c.arg("--spec-json").arg(spec).arg("--verify").arg(verify.to_string());
            c.arg("--arg0").arg(arg0).arg("--").arg(exe);
            c
        }
        Confinement::Unconfined => {
            let mut c = tokio::process::Command::new(exe);
            c.arg0(arg0).process_group(0);
            c
        }
    };
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().map(Task::Child).map_err(|e| cannot(&e))
}

/// A started task's process.
enum Task {
    /// Forked by the spawner, which reports its exit.
    Spawned(SpawnedChild),
    /// posix_spawn'ed by the worker: the wrapper, or the command unconfined.
    Child(tokio::process::Child),
}

/// One of the task's output streams.
type Output = Box<dyn AsyncRead + Unpin + Send>;

impl Task {
    /// Its pid, which leads its process group once it is confined.
    fn pid(&self) -> Option<Pid> {
        let id = match self {
            Self::Spawned(c) => Some(c.id()),
            Self::Child(c) => c.id(),
        };
        id.map(|id| Pid::from_raw(id as i32))
    }

    fn take_output(&mut self) -> (Option<Output>, Option<Output>) {
        match self {
            Self::Spawned(c) => {
                (c.stdout.take().map(|o| Box::new(o) as Output), c.stderr.take().map(|e| Box::new(e) as Output))
            }
            Self::Child(c) => {
                (c.stdout.take().map(|o| Box::new(o) as Output), c.stderr.take().map(|e| Box::new(e) as Output))
            }
        }
    }

    /// The exit status (None if the worker's own wait failed); Err if the spawner died and
    /// the status with it. Cancel-safe.
    async fn wait(&mut self) -> Result<Option<ExitStatus>, SpawnError> {
        match self {
            Self::Spawned(c) => c.wait().await.map(Some),
            Self::Child(c) => Ok(c.wait().await.ok()),
        }
    }

    fn start_kill(&mut self) {
        let _ = match self {
            Self::Spawned(c) => c.start_kill().map_err(|e| e.to_string()),
            Self::Child(c) => c.start_kill().map_err(|e| e.to_string()),
        };
    }
}

/// The wrapper's own failure, if it was one: the program was not the pinned file
/// (PolicyDenied), a required protection was missing or the program could not be exec'd
/// (BootFail). The command's own exit codes can collide with these, so only a run whose
/// stderr starts with the wrapper's prefix counts.
fn wrapper_error(wrapped: bool, exit_status: Option<i32>, stderr: &[u8]) -> Option<ErrCode> {
    if !wrapped || !stderr.starts_with(WRAPPER_PREFIX.as_bytes()) {
        return None;
    }
    match u8::try_from(exit_status?).ok()? {
        EXIT_VERIFY_FAILED => Some(ErrCode::PolicyDenied),
        EXIT_SANDBOX_REFUSED | EXIT_EXEC_FAILED => Some(ErrCode::BootFail),
        _ => None,
    }
}

/// Read until EOF or `stop`, keeping the first `cap` bytes and a marker saying how much was dropped.
async fn read_capped(r: Option<impl AsyncRead + Unpin>, cap: usize, stop: CancellationToken) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut kept = Vec::new();
    let mut dropped: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                dropped += n.saturating_sub(room) as u64;
            }
        }
    }
    if dropped > 0 {
        kept.extend_from_slice(
            format!("\n[machina: output truncated at {cap} bytes; {dropped} bytes dropped]\n").as_bytes(),
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> ShellPolicy {
        ShellPolicy::new(&ShellSettings { allow: allow.iter().map(PathBuf::from).collect(), env_allow: vec![] })
    }

    fn limits(ms: u64, cap: usize) -> RunLimits {
        RunLimits { timeout: Duration::from_millis(ms), output_cap: cap }
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn runs_allowed_command_with_cleared_env_in_its_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/env", "/usr/bin/pwd"]);
        let env = [("MACHINA_TASK_KEY", "k1".to_string())];
        let o =
            run(&p, &argv(&["/usr/bin/env"]), dir.path(), &env, &limits(5000, 4096), CancellationToken::new()).await;
        assert_eq!(o.err_code, None, "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("MACHINA_TASK_KEY=k1"));
        assert!(!text.contains("CARGO"), "environment must be cleared: {text}");
        let o = run(&p, &argv(&["/usr/bin/pwd"]), dir.path(), &[], &limits(5000, 4096), CancellationToken::new()).await;
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), canonical.to_str().unwrap());
    }

    #[tokio::test]
    async fn off_allowlist_and_relative_paths_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/true"]);
        for a in [&["/usr/bin/id"][..], &["true"][..], &["/nonexistent/x"][..]] {
            let o = run(&p, &argv(a), dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
            assert_eq!(o.err_code, Some(ErrCode::PolicyDenied), "{a:?}");
            assert_eq!(o.exit_status, None, "nothing ran");
        }
    }

    #[tokio::test]
    async fn symlinks_resolve_before_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("innocent");
        std::os::unix::fs::symlink("/usr/bin/id", &link).unwrap();
        let p = policy(&["/usr/bin/true"]);
        let o = run(&p, &argv(&[link.to_str().unwrap()]), dir.path(), &[], &limits(5000, 64), CancellationToken::new())
            .await;
        assert_eq!(o.err_code, Some(ErrCode::PolicyDenied));
        assert!(String::from_utf8_lossy(&o.stderr).contains("not on the allowlist"));
    }

    #[tokio::test]
    async fn a_symlink_on_the_allowlist_allows_only_its_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("true-link");
        std::os::unix::fs::symlink("/usr/bin/true", &allowed).unwrap();
        let p = policy(&[allowed.to_str().unwrap()]);
        let ok =
            run(&p, &argv(&[allowed.to_str().unwrap()]), dir.path(), &[], &limits(5000, 64), CancellationToken::new())
                .await;
        assert_eq!(ok.err_code, None);
        // The target itself is not on the list, only the name.
        let o = run(&p, &argv(&["/usr/bin/true"]), dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
        assert_eq!(o.err_code, Some(ErrCode::PolicyDenied));
        // Re-pointing the allowed name after startup is refused.
        std::fs::remove_file(&allowed).unwrap();
        std::os::unix::fs::symlink("/usr/bin/id", &allowed).unwrap();
        let o =
            run(&p, &argv(&[allowed.to_str().unwrap()]), dir.path(), &[], &limits(5000, 64), CancellationToken::new())
                .await;
        assert_eq!(o.err_code, Some(ErrCode::PolicyDenied));
        assert!(String::from_utf8_lossy(&o.stderr).contains("now resolves to"));
    }

    #[tokio::test]
    async fn a_process_escaping_the_group_cannot_hold_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/setsid"]);
        // setsid --wait stays in the task's group, waiting for a child it moved into a new
        // session (out of reach of the group kill) that keeps stdout open.
        let o = run(
            &p,
            &argv(&["/usr/bin/setsid", "--wait", "/usr/bin/sleep", "3"]),
            dir.path(),
            &[],
            &limits(1000, 64),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o.err_code, Some(ErrCode::Timeout));
        assert!(o.wall_ms < 2_900, "the worker was held for {} ms (the sleep lasts 3 s)", o.wall_ms);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("stopped reading output"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    #[tokio::test]
    async fn nonzero_exit_and_timeout_kill_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/false", "/usr/bin/sleep"]);
        let o = run(&p, &argv(&["/usr/bin/false"]), dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
        assert_eq!((o.err_code, o.exit_status), (Some(ErrCode::CmdNonzero), Some(1)));
        let o = run(&p, &argv(&["/usr/bin/sleep", "30"]), dir.path(), &[], &limits(200, 64), CancellationToken::new())
            .await;
        assert_eq!(o.err_code, Some(ErrCode::Timeout));
        assert_eq!(o.exit_status, Some(128 + 9));
        assert!(o.wall_ms < 10_000);
    }

    #[tokio::test]
    async fn output_is_capped_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/seq"]);
        let o = run(
            &p,
            &argv(&["/usr/bin/seq", "1", "100000"]),
            dir.path(),
            &[],
            &limits(5000, 100),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o.err_code, None);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.starts_with("1\n2\n3\n"));
        assert!(text.contains("[machina: output truncated at 100 bytes;"), "{text}");
        assert!(text.len() < 200);
    }

    #[tokio::test]
    async fn tasks_are_confined_to_their_directory() {
        if locate_wrapper().is_none() {
            eprintln!("skipped: machina-task-exec not built (cargo build --bin machina-task-exec)");
            return;
        }
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("task");
        std::fs::create_dir(&dir).unwrap();
        let p = policy(&["/usr/bin/touch"]);
        let inside = dir.join("ok");
        let o = run(
            &p,
            &argv(&["/usr/bin/touch", inside.to_str().unwrap()]),
            &dir,
            &[],
            &limits(5000, 4096),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o.err_code, None, "{}", String::from_utf8_lossy(&o.stderr));
        let outside = outer.path().join("escaped");
        let o = run(
            &p,
            &argv(&["/usr/bin/touch", outside.to_str().unwrap()]),
            &dir,
            &[],
            &limits(5000, 4096),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(o.err_code, Some(ErrCode::CmdNonzero), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!outside.exists(), "the task wrote outside its directory");
        assert!(inside.exists());
    }

    #[tokio::test]
    async fn a_required_sandbox_without_its_wrapper_runs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/true"])
            .with_sandbox(&SandboxSettings { required: true, ..SandboxSettings::default() })
            .with_wrapper(None);
        let o = run(&p, &argv(&["/usr/bin/true"]), dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
        assert_eq!((o.err_code, o.exit_status), (Some(ErrCode::BootFail), None));
    }

    #[tokio::test]
    async fn a_binary_replaced_after_allowlisting_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("tool");
        std::fs::copy("/usr/bin/true", &bin).unwrap();
        let argv0 = bin.to_str().unwrap();
        let wrapped = policy(&[argv0]);
        let unconfined = policy(&[argv0]).with_wrapper(None);
        let mut policies = vec![("unconfined", unconfined)];
        if wrapped.wrapper.is_some() {
            policies.push(("wrapped", wrapped));
        } else {
            eprintln!("wrapper part skipped: machina-task-exec not built (cargo build --bin machina-task-exec)");
        }
        for (what, p) in &policies {
            let o = run(p, &argv(&[argv0]), dir.path(), &[], &limits(5000, 256), CancellationToken::new()).await;
            assert_eq!(o.err_code, None, "{what} control: {}", String::from_utf8_lossy(&o.stderr));
        }
        let swap = dir.path().join("swap");
        std::fs::copy("/usr/bin/id", &swap).unwrap();
        std::fs::rename(&swap, &bin).unwrap();
        for (what, p) in &policies {
            let o = run(p, &argv(&[argv0]), dir.path(), &[], &limits(5000, 256), CancellationToken::new()).await;
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.err_code, Some(ErrCode::PolicyDenied), "{what}: {err}");
            assert!(o.stdout.is_empty(), "{what}: the replacement ran");
            assert!(err.contains("expected stat:"), "{what}: {err}");
            assert_eq!(err.starts_with(WRAPPER_PREFIX), *what == "wrapped", "{what}: {err}");
        }
    }

    #[test]
    fn only_the_wrappers_own_failures_count_as_its() {
        let says = |m: &str| format!("{WRAPPER_PREFIX}{m}").into_bytes();
        assert_eq!(wrapper_error(true, Some(124), &says("x is not the pinned file")), Some(ErrCode::PolicyDenied));
        assert_eq!(wrapper_error(true, Some(125), &says("required protection")), Some(ErrCode::BootFail));
        assert_eq!(wrapper_error(true, Some(127), &says("cannot execute")), Some(ErrCode::BootFail));
        assert_eq!(wrapper_error(true, Some(124), b"timeout: the command's own 124"), None);
        assert_eq!(wrapper_error(false, Some(124), &says("not the wrapper")), None);
        assert_eq!(wrapper_error(true, Some(1), &says("a task imitating it")), None);
    }

    /// Skips (returns None) without a built wrapper; fails if the one built has no spawner.
    async fn spawner_policy(allow: &[&str]) -> Option<ShellPolicy> {
        if locate_wrapper().is_none() {
            eprintln!("skipped: machina-task-exec not built (cargo build --bin machina-task-exec)");
            return None;
        }
        let p = policy(allow);
        let dir = tempfile::tempdir().unwrap();
        let a = argv(&[allow[0], "--version"]);
        run(&p, &a, dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
        assert!(p.spawner_pid().await.is_some(), "no spawner: rebuild machina-task-exec (it needs --serve)");
        Some(p)
    }

    #[tokio::test]
    async fn the_spawner_and_the_wrapper_start_the_same_task() {
        let Some(p) = spawner_policy(&["/usr/bin/env", "/usr/bin/id"]).await else { return };
        let dir = tempfile::tempdir().unwrap();
        let env = [("MACHINA_TASK_KEY", "k1".to_string()), ("PATH", "/override".to_string())];
        let wrapper = p.clone().with_spawner(false);
        let mut outcomes = Vec::new();
        for (what, p) in [("spawner", &p), ("wrapper", &wrapper)] {
            let mut outs = Vec::new();
            for a in [&["/usr/bin/env"][..], &["/usr/bin/id", "-u"][..]] {
                let o = run(p, &argv(a), dir.path(), &env, &limits(5000, 4096), CancellationToken::new()).await;
                assert_eq!(o.err_code, None, "{what} {a:?}: {}", String::from_utf8_lossy(&o.stderr));
                outs.push(String::from_utf8(o.stdout).unwrap());
            }
            outcomes.push(outs);
        }
        assert_eq!(outcomes[0], outcomes[1], "the same environment, in the same order, and the same process");
        let expected = format!("HOME={}\nMACHINA_TASK_KEY=k1\nPATH=/override\n", dir.path().display());
        assert_eq!(outcomes[0][0], expected, "exactly these, by name; extra_env overrides PATH");
        assert!(wrapper.spawner_pid().await.is_none());
    }

    #[tokio::test]
    async fn a_spawner_dying_under_a_task_is_reported_and_replaced() {
        let Some(p) = spawner_policy(&["/usr/bin/sleep", "/usr/bin/true"]).await else { return };
        let spawner = p.spawner_pid().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let running = {
            let (p, dir) = (p.clone(), dir.path().to_path_buf());
            tokio::spawn(async move {
                let a = argv(&["/usr/bin/sleep", "30"]);
                run(&p, &a, &dir, &[], &limits(20_000, 64), CancellationToken::new()).await
            })
        };
        let sleep = loop {
            if let Some(pid) = child_named(spawner, "sleep") {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        nix::sys::signal::kill(Pid::from_raw(spawner as i32), Signal::SIGKILL).unwrap();
        let o = running.await.unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!((o.err_code, o.exit_status), (Some(ErrCode::BootFail), None), "{err}");
        assert!(err.contains("the spawner died") && o.wall_ms < 10_000, "{err}");
        // Its group was killed: the orphan is gone (or a zombie of whoever adopted it).
        let state = std::fs::read_to_string(format!("/proc/{sleep}/stat")).unwrap_or_default();
        let gone = || std::fs::read_to_string(format!("/proc/{sleep}/stat")).map_or(true, |s| s.contains(") Z"));
        for _ in 0..500 {
            if gone() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone(), "the orphaned task still runs: {state}");
        let o = run(&p, &argv(&["/usr/bin/true"]), dir.path(), &[], &limits(5000, 64), CancellationToken::new()).await;
        assert_eq!(o.err_code, None, "{}", String::from_utf8_lossy(&o.stderr));
        assert!(p.spawner_pid().await.is_some_and(|new| new != spawner), "a new spawner runs the next task");
    }

    /// A child of `parent` running `comm`, from /proc.
    fn child_named(parent: u32, comm: &str) -> Option<u32> {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent && name == comm).then_some(pid)
        })
    }

    #[tokio::test]
    async fn cancel_kills_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(&["/usr/bin/sleep"]);
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            t2.cancel();
        });
        let o = run(&p, &argv(&["/usr/bin/sleep", "30"]), dir.path(), &[], &limits(60_000, 64), token).await;
        assert_eq!(o.err_code, Some(ErrCode::Canceled));
    }
}
