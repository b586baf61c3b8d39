//! The external policy driver: a plan source outside machina.
//!
//! The operator configures a command (`[driver]`); for a step that asks it for a plan,
//! the driver reads one JSON document on stdin, `{"intent": {...}, "recipe": {...}}`
//! (built by the caller, followed by a newline), and prints a [`Plan`] as JSON on stdout.
//! It runs under machina-task-exec with the task sandbox: a fresh work directory (its
//! cwd and HOME) is the only place it may write, `driver.allowed_roots` and the default
//! system paths are read-only, only `driver.allowed_executables` may be executed, TCP is
//! denied (a driver never has network), and rlimits apply. It has its own timeout and
//! stdout cap; the whole process group is killed when it ends either way.
//!
//! The command is resolved against the allowlists when the [`Driver`] is built and again
//! before each run (see [`pin`]); the executable's identity is pinned and the wrapper
//! refuses a replaced file (`--verify stat:…`). A plan that comes back is checked against
//! the plan schema only; the caller checks it against the recipe
//! (`Recipe::check_plan`) before storing it, as for a plan from any source.
//!
//! Without the wrapper (development trees) the driver runs unconfined in its own process
//! group, unless the sandbox is required, in which case no driver is built.

mod pin;
mod run;

use machina_core::config::DriverSettings;
use machina_core::{ErrCode, Plan};
use machina_sandbox::{Required, Rlimits, SandboxSpec, Verify};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use pin::Pins;
use run::Limits;

/// PATH given to the driver (it can execute only its allowlisted executables anyway).
const DRIVER_PATH: &str = "/usr/bin:/bin";

/// Why the driver gave no plan. Each variant has a stable [`kind`](Self::kind) and a task
/// failure code ([`err_code`](Self::err_code)); the message says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The settings cannot make a driver (an allowlist entry missing or not canonical, a
    /// required sandbox without its wrapper).
    #[error("{0}")]
    Config(String),
    /// The command does not fit the allowlists, or a file changed since the driver was
    /// built (refused here or by machina-task-exec's `--verify`).
    #[error("{0}")]
    Refused(String),
    /// The driver ran past `driver.timeout_ms`.
    #[error("{0}")]
    Timeout(String),
    /// The driver printed more than `driver.stdout_cap_bytes`.
    #[error("{0}")]
    OutputCap(String),
    /// The driver exited non-zero or was killed by a signal.
    #[error("policy driver {program} {}: {}", run::describe_status(status), or_nothing(stderr_tail))]
    Exit {
        /// The driver as configured (executable and script).
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// Its last lines on stderr.
        stderr_tail: String,
    },
    /// What the driver printed is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// What the driver printed is JSON but not a valid plan.
    #[error("{0}")]
    InvalidPlan(String),
    /// The driver could not be started (or the sandbox it needs could not be applied).
    #[error("{0}")]
    Spawn(String),
}

fn or_nothing(tail: &str) -> &str {
    if tail.is_empty() { "(nothing on stderr)" } else { tail }
}

impl DriverError {
    /// The task failure code: DRIVER_FAIL when the driver did not run to a good end,
    /// PLAN_INVALID when what it printed is not a plan, POLICY_DENIED when the allowlists
    /// or the pin refused it.
    pub fn err_code(&self) -> ErrCode {
        match self {
            Self::Config(_) | Self::Timeout(_) | Self::OutputCap(_) | Self::Exit { .. } | Self::Spawn(_) => {
                ErrCode::DriverFail
            }
            Self::InvalidJson(_) | Self::InvalidPlan(_) => ErrCode::PlanInvalid,
            Self::Refused(_) => ErrCode::PolicyDenied,
        }
    }

    /// Stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "driver_config",
            Self::Refused(_) => "driver_refused",
            Self::Timeout(_) => "driver_timeout",
            Self::OutputCap(_) => "driver_output_cap",
            Self::Exit { .. } => "driver_exit",
            Self::InvalidJson(_) => "driver_invalid_json",
            Self::InvalidPlan(_) => "driver_invalid_plan",
            Self::Spawn(_) => "driver_spawn",
        }
    }
}

/// A configured policy driver, its files resolved and pinned.
#[derive(Debug)]
pub struct Driver {
    /// `driver.command` as configured.
    command: Vec<String>,
    pins: Arc<Pins>,
    /// machina-task-exec; None runs the driver unconfined.
    wrapper: Option<PathBuf>,
    /// Every protection must be in force (`sandbox.required`).
    required: bool,
    rlimits: Rlimits,
    /// `driver.cpu_secs` and `driver.address_space_bytes`, which win over any base limits.
    overrides: (Option<u64>, Option<u64>),
    limits: Limits,
    /// How messages name the driver: its executable and first file argument.
    label: String,
}

impl Driver {
    /// Build the driver `settings` describe; None when no command is configured.
    ///
    /// Resolves and pins the command's files (it touches the filesystem: call it at
    /// startup, not on an async thread's hot path). `wrapper` is machina-task-exec; without
    /// it the driver runs unconfined, or, when `sandbox_required`, is refused (Config).
    /// The rlimits are the sandbox defaults with the settings' overrides
    /// (see [`with_base_rlimits`](Self::with_base_rlimits)).
    pub fn new(
        settings: &DriverSettings,
        wrapper: Option<PathBuf>,
        sandbox_required: bool,
    ) -> Result<Option<Self>, DriverError> {
        if !settings.is_configured() {
            return Ok(None);
        }
        settings.validate().map_err(|e| DriverError::Config(e.to_string()))?;
        if wrapper.is_none() && sandbox_required {
            return Err(DriverError::Config(
                "sandbox.required is set but machina-task-exec was not found: the policy driver cannot be confined"
                    .into(),
            ));
        }
        let pins = Pins::resolve(settings)?;
        let label = std::iter::once(&settings.command[0])
            .chain(settings.command[1..].iter().find(|a| a.starts_with('/')))
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        let limits = Limits {
            timeout: Duration::from_millis(settings.timeout_ms),
            stdout_cap: usize::try_from(settings.stdout_cap_bytes).unwrap_or(usize::MAX),
            stderr_cap: usize::try_from(settings.stderr_cap_bytes).unwrap_or(usize::MAX),
        };
        match &wrapper {
            Some(w) => tracing::info!(driver = %label, wrapper = %w.display(), "policy driver configured, sandboxed"),
            None => {
                tracing::warn!(driver = %label, "policy driver configured but machina-task-exec was not found: it runs unconfined")
            }
        }
        let overrides = (settings.cpu_secs, settings.address_space_bytes);
        let driver = Self {
            command: settings.command.clone(),
            pins: Arc::new(pins),
            wrapper,
            required: sandbox_required,
            rlimits: Rlimits::default(),
            overrides,
            limits,
            label,
        };
        Ok(Some(driver.with_base_rlimits(Rlimits::default())))
    }

    /// Start from `base` (e.g. the `[sandbox]` limits of tasks) instead of the sandbox
    /// defaults; `driver.cpu_secs` and `driver.address_space_bytes` still win.
    pub fn with_base_rlimits(mut self, base: Rlimits) -> Self {
        let (cpu, address_space) = self.overrides;
        self.rlimits = Rlimits {
            cpu_secs: cpu.unwrap_or(base.cpu_secs),
            address_space_bytes: address_space.unwrap_or(base.address_space_bytes),
            ..base
        };
        self
    }

    /// Ask the driver for a plan: run it in `work_dir` (a fresh, empty directory the
    /// caller owns and removes afterwards) with `input` as JSON on its stdin, and parse
    /// what it prints. The files are checked again first; the process is spawned with
    /// tokio (nothing blocks an async thread), and its whole process group is killed when
    /// it ends, times out, exceeds its stdout cap, or this future is dropped.
    pub async fn plan(&self, input: &serde_json::Value, work_dir: &Path) -> Result<Plan, DriverError> {
        let pins = Arc::clone(&self.pins);
        let unconfined = self.wrapper.is_none();
        tokio::task::spawn_blocking(move || pins.recheck(unconfined)).await.map_err(|e| {
            DriverError::Spawn(format!("policy driver {}: the pre-run check failed: {e}", self.label))
        })??;
        let mut stdin = serde_json::to_vec(input)
            .map_err(|e| DriverError::Spawn(format!("policy driver {}: cannot encode its input: {e}", self.label)))?;
        stdin.push(b'\n');
        let cmd = self.command(work_dir)?;
        let out = run::run(cmd, stdin, self.limits, &self.label, !unconfined).await?;
        parse_plan(&self.label, &out)
    }

    /// The process to start: the wrapper with the sandbox spec and the executable's pin,
    /// or (unconfined) the executable in a process group of its own. File arguments are
    /// passed as the canonical paths that were checked.
    fn command(&self, work_dir: &Path) -> Result<tokio::process::Command, DriverError> {
        let exe = &self.pins.exe.canonical;
        let mut cmd = match &self.wrapper {
            // The wrapper calls setsid itself: it must not already lead a group.
            Some(wrapper) => {
                let spec = serde_json::to_string(&self.spec(work_dir)).map_err(|e| {
                    DriverError::Spawn(format!("policy driver {}: cannot encode its sandbox: {e}", self.label))
                })?;
                let mut c = tokio::process::Command::new(wrapper);
                c.arg("--spec-json").arg(spec);
                c.arg("--verify").arg(Verify::Stat(self.pins.exe.identity).to_string());
                c.arg("--arg0").arg(&self.command[0]).arg("--").arg(exe);
                c
            }
            None => {
                let mut c = tokio::process::Command::new(exe);
                c.arg0(&self.command[0]).process_group(0);
                c
            }
        };
        let mut files = self.pins.files.iter();
        for a in &self.command[1..] {
            match a.starts_with('/').then(|| files.next()).flatten() {
                Some(f) => cmd.arg(&f.canonical),
                None => cmd.arg(a),
            };
        }
        cmd.env_clear().env("PATH", DRIVER_PATH).env("HOME", work_dir).current_dir(work_dir);
        Ok(cmd)
    }

    /// The driver's sandbox: full access to `work_dir` only; the default read-only
    /// paths, the allowed roots and executables readable; only the allowed executables
    /// (and the dynamic loaders) executable; no TCP.
    fn spec(&self, work_dir: &Path) -> SandboxSpec {
        let mut spec = SandboxSpec::new(work_dir);
        spec.read_only.extend(self.pins.roots.iter().cloned());
        spec.read_only.extend(self.pins.executables.iter().cloned());
        spec.exec_paths = Some(self.pins.executables.clone());
        spec.network = false;
        spec.rlimits = self.rlimits;
        spec.required = if self.required { Required::all() } else { Required::default() };
        spec
    }
}

/// Parse what the driver printed: JSON (else InvalidJson), a [`Plan`] (else InvalidPlan).
fn parse_plan(label: &str, out: &[u8]) -> Result<Plan, DriverError> {
    if out.iter().all(u8::is_ascii_whitespace) {
        return Err(DriverError::InvalidJson(format!(
            "policy driver {label} printed nothing on stdout; it must print a plan as JSON"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(out).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let what = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full);
        let began: String = String::from_utf8_lossy(out).chars().take(run::STDOUT_EXCERPT_CHARS).collect();
        DriverError::InvalidJson(format!(
            "policy driver {label} printed invalid JSON at line {line} column {column}: {what}; its stdout began {began:?}"
        ))
    })?;
    let plan: Plan = serde_json::from_value(value)
        .map_err(|e| DriverError::InvalidPlan(format!("policy driver {label} printed JSON that is not a plan: {e}")))?;
    check_schema(&plan).map_err(|m| DriverError::InvalidPlan(format!("policy driver {label} printed a plan {m}")))?;
    Ok(plan)
}

/// What the plan schema demands beyond its types (the recipe's caps and tools are the
/// caller's check).
fn check_schema(plan: &Plan) -> Result<(), String> {
    if plan.concurrency == 0 {
        return Err("with concurrency 0 (at least 1)".into());
    }
    if plan.tasks.is_empty() {
        return Err("with no tasks".into());
    }
    for (i, t) in plan.tasks.iter().enumerate() {
        if t.name.is_empty() {
            return Err(format!("whose task {i} has an empty name"));
        }
        if t.argv.is_empty() || t.argv[0].is_empty() {
            return Err(format!("whose task {:?} has an empty argv", t.name));
        }
        if t.timeout_secs == 0 {
            return Err(format!("whose task {:?} has timeout_secs 0 (at least 1)", t.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASK: &str = r#"{"name":"a","tool":"shell","argv":["/usr/bin/true"],"timeout_secs":5}"#;

    fn plan_json(extra: &str, task: &str) -> String {
        format!(r#"{{"recipe":"r","concurrency":1,"tasks":[{task}]{extra}}}"#)
    }

    #[test]
    fn a_plan_parses() {
        let p = parse_plan("d", plan_json("", TASK).as_bytes()).unwrap();
        assert_eq!((p.recipe.as_str(), p.concurrency, p.tasks.len()), ("r", 1, 1));
    }

    #[test]
    fn invalid_json_names_the_position() {
        let e = parse_plan("/d/drv.sh", b"{\"recipe\": oops}").unwrap_err();
        assert_eq!((e.kind(), e.err_code()), ("driver_invalid_json", ErrCode::PlanInvalid));
        let m = e.to_string();
        assert!(
            m.starts_with("policy driver /d/drv.sh printed invalid JSON at line 1 column 12: expected value"),
            "{m}"
        );
        assert!(m.contains("its stdout began \"{\\\"recipe\\\": oops}\""), "{m}");
        assert!(parse_plan("d", b" \n").unwrap_err().to_string().contains("printed nothing on stdout"));
        assert_eq!(
            parse_plan("d", format!("{} x", plan_json("", TASK)).as_bytes()).unwrap_err().kind(),
            "driver_invalid_json"
        );
    }

    #[test]
    fn json_that_is_not_a_plan_is_plan_invalid() {
        for (text, expected) in [
            (plan_json(r#","extra":1"#, TASK), "unknown field `extra`"),
            (r#"{"recipe":"r","tasks":[]}"#.to_string(), "missing field `concurrency`"),
            (plan_json("", &TASK.replace("5", "-5")), "invalid value"),
            (plan_json("", &TASK.replace(r#"["/usr/bin/true"]"#, "[]")), "empty argv"),
            (plan_json("", &TASK.replace(":5", ":0")), "timeout_secs 0"),
            (plan_json("", &TASK.replace(r#""a""#, r#""""#)), "empty name"),
            (plan_json("", "").replace(r#""concurrency":1"#, r#""concurrency":0"#), "concurrency 0"),
            (plan_json("", ""), "no tasks"),
        ] {
            let e = parse_plan("d", text.as_bytes()).unwrap_err();
            assert_eq!((e.kind(), e.err_code()), ("driver_invalid_plan", ErrCode::PlanInvalid), "{text}");
            assert!(e.to_string().contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn error_codes_follow_the_cause() {
        use std::os::unix::process::ExitStatusExt;
        let exit =
            DriverError::Exit { program: "d".into(), status: ExitStatus::from_raw(3 << 8), stderr_tail: String::new() };
        for (e, code) in [
            (DriverError::Timeout(String::new()), ErrCode::DriverFail),
            (DriverError::OutputCap(String::new()), ErrCode::DriverFail),
            (DriverError::Spawn(String::new()), ErrCode::DriverFail),
            (DriverError::Config(String::new()), ErrCode::DriverFail),
            (exit, ErrCode::DriverFail),
            (DriverError::Refused(String::new()), ErrCode::PolicyDenied),
        ] {
            assert_eq!(e.err_code(), code, "{}", e.kind());
        }
    }

    #[test]
    fn no_command_is_no_driver_and_a_required_sandbox_needs_the_wrapper() {
        assert!(Driver::new(&DriverSettings::default(), None, true).unwrap().is_none());
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let s = DriverSettings {
            command: vec![sh.to_str().unwrap().into()],
            allowed_executables: vec![sh.clone()],
            ..DriverSettings::default()
        };
        let e = Driver::new(&s, None, true).unwrap_err();
        assert_eq!(e.kind(), "driver_config");
        assert!(e.to_string().contains("machina-task-exec was not found"), "{e}");
        let bad = DriverSettings { timeout_ms: 0, ..s.clone() };
        assert!(Driver::new(&bad, None, false).unwrap_err().to_string().contains("driver.timeout_ms"));
    }

    #[test]
    fn the_sandbox_allows_only_what_was_configured() {
        let root = tempfile::tempdir().unwrap();
        let script = root.path().join("drv.sh");
        std::fs::write(&script, "exit 0\n").unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let s = DriverSettings {
            command: vec![sh.to_str().unwrap().into(), script.to_str().unwrap().into(), "-x".into()],
            allowed_executables: vec![sh.clone()],
            allowed_roots: vec![root.path().into()],
            cpu_secs: Some(7),
            ..DriverSettings::default()
        };
        let d = Driver::new(&s, Some("/nonexistent/wrapper".into()), true).unwrap().unwrap();
        let spec = d.spec(Path::new("/work/x"));
        let canonical_root = std::fs::canonicalize(root.path()).unwrap();
        assert_eq!(spec.task_dir, Path::new("/work/x"));
        assert!(!spec.network);
        assert_eq!(spec.exec_paths, Some(vec![sh.clone()]));
        assert!(spec.read_only.contains(&canonical_root) && spec.read_only.contains(&PathBuf::from("/usr")));
        assert_eq!(spec.required, Required::all());
        assert_eq!(
            (spec.rlimits.cpu_secs, spec.rlimits.address_space_bytes),
            (7, Rlimits::default().address_space_bytes)
        );
        let d = d.with_base_rlimits(Rlimits { cpu_secs: 1, open_files: 32, ..Rlimits::default() });
        assert_eq!((d.rlimits.cpu_secs, d.rlimits.open_files), (7, 32), "the override wins, the base fills the rest");
        assert_eq!(d.label, format!("{} {}", sh.display(), script.display()));
    }
}
