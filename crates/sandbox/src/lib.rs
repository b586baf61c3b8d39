//! machina-sandbox: confinement a task's process applies to itself just before it execs.
//!
//! The worker spawns the small `machina-task-exec` wrapper (posix_spawn, no fork of the
//! large worker) with a [`SandboxSpec`]; the wrapper calls [`apply`] and then execs the
//! task's argv. [`apply`] starts a new session, sets `no_new_privs`, lowers rlimits,
//! drops every capability (the bounding set too, when it may) and restricts itself with
//! landlock: read+execute beneath the read-only paths (or read beneath them and execute
//! only beneath [`SandboxSpec::exec_paths`]), everything beneath the task directory (or
//! only reading it), no TCP unless the spec allows network, and (landlock ABI 6) no
//! signals or abstract unix sockets beyond the sandbox. Each step is best effort; the
//! [`Report`] says what is in force and [`Required`] says what must be, or nothing is
//! exec'd. With `--verify`, the wrapper execs the very file it checked ([`Verify`]).
//!
//! The [`Spawner`] (`machina-task-exec --serve`) does the same without the wrapper's
//! exec: a small process the worker starts once forks each task, and the child applies
//! the spec and execs the task (see the `spawner` module).

mod apply;
mod exec;
mod loaders;
mod preflight;
mod spawner;
mod verify;

pub use apply::{Report, SandboxError, apply};
pub use exec::{EXIT_EXEC_FAILED, EXIT_SANDBOX_REFUSED, EXIT_VERIFY_FAILED, WRAPPER_PREFIX, exec_main, exec_main_with};
pub use loaders::{LOADER_DIRS, dynamic_loaders};
pub use preflight::{Preflight, preflight};
pub use spawner::{
    ChildIo, LazySpawner, MAX_REQUEST_BYTES, RETRY_AFTER, START_TIMEOUT, SpawnError, SpawnRequest, SpawnedChild,
    Spawner,
};
pub use verify::{Identity, Verify, VerifyError};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Paths tasks may read and execute beneath by default (those that exist when applied).
pub const DEFAULT_READ_ONLY: [&str; 9] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/usr/share/zoneinfo",
    "/etc/alternatives",
];

/// What a program needs to read to start and run — libraries, the loader cache, shared
/// data, the time zone — without the system's executables (/usr/bin, /usr/sbin,
/// /usr/libexec, /bin, /sbin): the read-only set of a task that may execute only itself,
/// so it cannot load a system tool through the dynamic loader either (see [`dynamic_loaders`]).
pub const LIBRARY_READ_ONLY: [&str; 11] = [
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libx32",
    "/usr/share",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/localtime",
];

/// Device files tasks may read and write by default.
pub const DEFAULT_DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// How one task's process is confined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// The task's own directory: full access beneath it.
    pub task_dir: PathBuf,
    /// Read and execute beneath these (entries that do not exist are skipped).
    #[serde(default = "default_read_only")]
    pub read_only: Vec<PathBuf>,
    /// Device files opened read-write (e.g. /dev/null).
    #[serde(default = "default_devices")]
    pub devices: Vec<PathBuf>,
    /// Whether TCP bind/connect is allowed (denied by landlock ABI ≥ 4 when false).
    #[serde(default)]
    pub network: bool,
    /// Resource limits.
    #[serde(default)]
    pub rlimits: Rlimits,
    /// Protections that must be in force, or the command is not run.
    #[serde(default)]
    pub required: Required,
    /// None: everything beneath `read_only` may also be executed. Some: `read_only` and the
    /// task directory are not executable; only files beneath these paths are, plus the
    /// dynamic loaders ([`dynamic_loaders`]) the kernel must execute to start an ELF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_paths: Option<Vec<PathBuf>>,
    /// Whether the task may write beneath its directory (false: it may only read there).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub task_dir_writable: bool,
}

impl SandboxSpec {
    /// A spec with the defaults for `task_dir`.
    pub fn new(task_dir: impl Into<PathBuf>) -> Self {
        Self {
            task_dir: task_dir.into(),
            read_only: default_read_only(),
            devices: default_devices(),
            network: false,
            rlimits: Rlimits::default(),
            required: Required::default(),
            exec_paths: None,
            task_dir_writable: true,
        }
    }
}

fn yes() -> bool {
    true
}

// serde's skip_serializing_if hands the field by reference.
fn is_true(b: &bool) -> bool {
    *b
}

fn default_read_only() -> Vec<PathBuf> {
    DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect()
}

fn default_devices() -> Vec<PathBuf> {
    DEFAULT_DEVICES.iter().map(PathBuf::from).collect()
}

/// Resource limits (soft = hard); a limit above the current hard limit is lowered to it.
///
/// `processes` is RLIMIT_NPROC, which counts every process of the *user*, not of the task:
/// it must leave room for everything else the worker's uid runs (all workers' tasks
/// together). It does not apply to root (uid 0 is exempt in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rlimits {
    /// RLIMIT_CPU: CPU seconds before SIGXCPU/SIGKILL.
    pub cpu_secs: u64,
    /// RLIMIT_AS: address space.
    pub address_space_bytes: u64,
    /// RLIMIT_FSIZE: largest file written (SIGXFSZ beyond).
    pub file_size_bytes: u64,
    /// RLIMIT_NOFILE: open files.
    pub open_files: u64,
    /// RLIMIT_NPROC: processes of the uid (see the type's docs).
    pub processes: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Self { cpu_secs: 60, address_space_bytes: 1 << 30, file_size_bytes: 64 << 20, open_files: 256, processes: 512 }
    }
}

/// Protections that must be in force before the command runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Required {
    /// Landlock filesystem rules fully enforced.
    pub landlock: bool,
    /// TCP denied by landlock (only meaningful when the spec's network is false).
    pub network_denied: bool,
    /// `no_new_privs` set.
    pub no_new_privs: bool,
    /// Every rlimit applied.
    pub rlimits: bool,
    /// No capability left in any set, the bounding set included.
    pub no_capabilities: bool,
}

impl Required {
    /// Everything required.
    pub fn all() -> Self {
        Self { landlock: true, network_denied: true, no_new_privs: true, rlimits: true, no_capabilities: true }
    }
}
