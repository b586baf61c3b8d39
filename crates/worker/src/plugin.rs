//! Running one plugin (machina-tools' `plugin` module loads and accepts them).
//!
//! A plugin always runs through `machina-task-exec` with `--verify sha256:…`: the wrapper
//! opens the executable after the sandbox is applied, hashes that open file, compares in
//! constant time and execs the same file, so neither a swap by rename nor an in-place
//! rewrite after loading is ever run. Without the wrapper a plugin is refused, whatever
//! `sandbox.required` says: its capabilities would be neither checked nor enforced.
//!
//! The sandbox is built from the declared capabilities ([`sandbox_spec`]); every
//! protection is required, so a kernel that cannot enforce them runs no plugin.

use machina_core::ErrCode;
use machina_sandbox::{DEFAULT_READ_ONLY, LIBRARY_READ_ONLY, Required, SandboxSpec, Verify};
use machina_tools::plugin::{CapSet, Plugin};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::shell::{Confinement, Launch, RunLimits, ShellOutcome, ShellPolicy, TASK_EXEC_ENV, launch};

/// Run `plugin` with `args` in `dir`, confined as its capabilities say. The run's timeout
/// is the smaller of `limits.timeout` and the plugin's own `timeout_secs`. A pin mismatch
/// is PolicyDenied with the wrapper's message (expected and actual digest) in stderr.
pub async fn run(
    shell: &ShellPolicy,
    plugin: &Plugin,
    args: &[String],
    dir: &Path,
    extra_env: &[(&str, String)],
    limits: &RunLimits,
    cancel: CancellationToken,
) -> ShellOutcome {
    let Some(wrapper) = shell.wrapper.clone() else {
        return ShellOutcome::refused(
            ErrCode::BootFail,
            format!(
                "plugin {} not run: plugins always run sandboxed and pinned by machina-task-exec, which was \
                 not found (install it or set {TASK_EXEC_ENV})",
                plugin.name
            ),
        );
    };
    let mut limits = limits.clone();
    if let Some(secs) = plugin.timeout_secs {
        limits.timeout = limits.timeout.min(Duration::from_secs(secs));
    }
    let confinement = Confinement::Wrapped {
        wrapper,
        spec: Box::new(sandbox_spec(shell, plugin, dir)),
        verify: Verify::Sha256(plugin.sha256),
    };
    let arg0 = plugin.path.to_string_lossy();
    let l = Launch { exe: &plugin.path, arg0: &arg0, args, confinement };
    launch(shell, l, dir, extra_env, &limits, cancel).await
}

/// The sandbox of `plugin` run in `dir`: what each capability grants, nothing more.
///
/// - always: execution only beneath `exec_paths` (never the task dir), every protection required;
/// - `NETWORK`: TCP allowed, else denied;
/// - `FILE_WRITE`: the task dir writable, else read-only;
/// - `FILE_READ`: the manifest's `read_paths` readable, else not;
/// - `SHELL`: the system's executables readable and executable, else only the plugin (and
///   its `#!` interpreter) may be executed, and the system's executables are not even
///   readable ([`LIBRARY_READ_ONLY`]), so the dynamic loader cannot run them either;
/// - `MEMORY`: address space up to the plugins' `memory_bytes`, else the sandbox's limit.
pub fn sandbox_spec(shell: &ShellPolicy, plugin: &Plugin, dir: &Path) -> SandboxSpec {
    let caps = plugin.caps;
    let mut spec = SandboxSpec::new(dir);
    spec.required = Required::all();
    spec.rlimits = shell.rlimits;
    if caps.contains(CapSet::MEMORY) {
        spec.rlimits.address_space_bytes = shell.plugin_memory_bytes;
    }
    spec.network = caps.contains(CapSet::NETWORK);
    spec.task_dir_writable = caps.contains(CapSet::FILE_WRITE);
    let own = std::iter::once(plugin.path.clone()).chain(plugin.interpreter.clone());
    let exec: Vec<PathBuf> = if caps.contains(CapSet::SHELL) {
        DEFAULT_READ_ONLY.iter().map(PathBuf::from).chain(own).collect()
    } else {
        spec.read_only = LIBRARY_READ_ONLY.iter().map(PathBuf::from).collect();
        own.collect()
    };
    spec.exec_paths = Some(exec);
    if caps.contains(CapSet::FILE_READ) {
        spec.read_only.extend(plugin.read_paths.iter().cloned());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use machina_core::config::ShellSettings;
    use std::os::unix::fs::PermissionsExt;

    fn shell() -> ShellPolicy {
        ShellPolicy::new(&ShellSettings { allow: vec![], env_allow: vec![] })
    }

    /// A plugin pinned to the file at `path` as it is now (a zero digest if there is none).
    fn plugin(path: &Path, caps: CapSet) -> Plugin {
        Plugin {
            name: "p".into(),
            path: path.to_path_buf(),
            sha256: machina_tools::plugin::file_sha256(path).unwrap_or_default(),
            caps,
            tier: 3,
            description: None,
            read_paths: vec!["/srv/data".into()],
            timeout_secs: None,
            interpreter: Some("/bin/sh".into()),
            source: "/etc/machina/plugins.d/p.toml".into(),
        }
    }

    #[test]
    fn capabilities_map_to_the_sandbox() {
        let s = shell().with_plugin_memory_bytes(3 << 30);
        let none = sandbox_spec(&s, &plugin(Path::new("/opt/p"), CapSet::empty()), Path::new("/t"));
        assert_eq!(none.required, Required::all());
        assert!(!none.network && !none.task_dir_writable);
        assert_eq!(none.exec_paths, Some(vec![PathBuf::from("/opt/p"), PathBuf::from("/bin/sh")]));
        assert!(!none.read_only.iter().any(|p| p == Path::new("/usr") || p == Path::new("/srv/data")));
        assert_eq!(none.rlimits, s.rlimits);

        let all = sandbox_spec(&s, &plugin(Path::new("/opt/p"), CapSet::all()), Path::new("/t"));
        assert!(all.network && all.task_dir_writable);
        let exec = all.exec_paths.unwrap();
        assert!(exec.contains(&PathBuf::from("/usr")) && exec.contains(&PathBuf::from("/opt/p")));
        assert!(all.read_only.contains(&PathBuf::from("/usr")) && all.read_only.contains(&PathBuf::from("/srv/data")));
        assert_eq!(all.rlimits.address_space_bytes, 3 << 30);
    }

    #[tokio::test]
    async fn a_plugin_never_runs_without_the_wrapper() {
        let dir = tempfile::tempdir().unwrap();
        let p = plugin(Path::new("/bin/true"), CapSet::all());
        let limits = RunLimits { timeout: Duration::from_secs(5), output_cap: 64 };
        let o = run(&shell().with_wrapper(None), &p, &[], dir.path(), &[], &limits, CancellationToken::new()).await;
        assert_eq!((o.err_code, o.exit_status), (Some(ErrCode::BootFail), None));
        assert!(String::from_utf8_lossy(&o.stderr).contains("machina-task-exec"));
    }

    #[tokio::test]
    async fn a_pinned_script_runs_and_a_tampered_one_is_denied() {
        let s = shell();
        if s.wrapper.is_none() {
            eprintln!("skipped: machina-task-exec not built (cargo build --bin machina-task-exec)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("task");
        std::fs::create_dir(&task).unwrap();
        let path = dir.path().join("hello");
        std::fs::write(&path, b"#!/bin/sh\necho \"hello $1\"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = plugin(&path, CapSet::empty());
        let limits = RunLimits { timeout: Duration::from_secs(5), output_cap: 4096 };
        let args = ["world".to_string()];
        let o = run(&s, &p, &args, &task, &[], &limits, CancellationToken::new()).await;
        assert_eq!(o.err_code, None, "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, b"hello world\n");
        std::fs::write(&path, b"#!/bin/sh\necho pwned\n").unwrap();
        let o = run(&s, &p, &args, &task, &[], &limits, CancellationToken::new()).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.err_code, Some(ErrCode::PolicyDenied), "{err}");
        assert!(o.stdout.is_empty() && err.contains("expected sha256:"), "{err}");
    }
}
