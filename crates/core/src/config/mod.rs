//! Settings: TOML drop-ins merged in order, parsed once, validated.
//!
//! Directories are read in the order given (the binaries pass
//! /usr/lib/machina/config.d, /etc/machina/config.d, /run/machina/config.d);
//! within the union, a file in a later directory replaces one of the same
//! name in an earlier one, and files apply in lexical order of their names.
//! An unknown key is an error naming the file and the key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::retry::RetryPolicy;

mod arbitration;
mod driver;
mod judge;
mod profile;
mod tools;

pub use arbitration::*;
pub use driver::*;
pub use judge::*;
pub use profile::Profile;
pub use tools::*;

/// Why settings could not be loaded. Binaries exit 78 (EX_CONFIG) on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything configurable, validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `"dev"` or `"prod"`: the defaults every unset setting takes (see [`Profile`]); an
    /// explicit setting always beats the profile.
    pub profile: Profile,
    /// Where the ledger and artifacts live (systemd's STATE_DIRECTORY wins when set).
    pub state_dir: PathBuf,
    /// Directories of recipe files, lowest priority first; a recipe in a later
    /// directory replaces a built-in or earlier one of the same name.
    pub recipe_dirs: Vec<PathBuf>,
    /// HTTP API.
    pub api: ApiSettings,
    /// Worker processes.
    pub worker: WorkerSettings,
    /// Tools.
    pub tools: ToolSettings,
    /// D-Bus.
    pub bus: BusSettings,
    /// The hourly maintenance run.
    pub maintenance: MaintenanceSettings,
    /// Snapshots of the state directory (machina-snapshot).
    pub snapshot: SnapshotSettings,
    /// Which task failures are retried.
    pub retry: RetryPolicy,
    /// Confinement of every task's process (machina-task-exec).
    pub sandbox: SandboxSettings,
    /// The ledger file.
    pub ledger: LedgerSettings,
    /// Permission leases for tools above the free tier.
    pub leases: LeaseSettings,
    /// The LLM judge and planner: providers, model policy, credentials, modes.
    pub judge: JudgeSettings,
    /// The external policy driver (a plan source).
    pub driver: DriverSettings,
    /// New work on a busy partition.
    pub arbitration: ArbitrationSettings,
}

/// Ledger settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// `"full"`: every commit is fsynced (survives power loss; the prod default);
    /// `"normal"`: fsync at checkpoints only (survives a process crash, not power loss).
    pub synchronous: String,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self { synchronous: "normal".into() }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            profile: Profile::Dev,
            state_dir: PathBuf::from("/var/lib/machina"),
            recipe_dirs: vec![PathBuf::from("/usr/lib/machina/recipes.d"), PathBuf::from("/etc/machina/recipes.d")],
            api: ApiSettings::default(),
            worker: WorkerSettings::default(),
            tools: ToolSettings::default(),
            bus: BusSettings::default(),
            maintenance: MaintenanceSettings::default(),
            snapshot: SnapshotSettings::default(),
            retry: RetryPolicy::default(),
            sandbox: SandboxSettings::default(),
            ledger: LedgerSettings::default(),
            leases: LeaseSettings::default(),
            judge: JudgeSettings::default(),
            driver: DriverSettings::default(),
            arbitration: ArbitrationSettings::default(),
        }
    }
}

/// HTTP API settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Address to listen on when systemd hands over no socket.
    pub listen: String,
    /// File holding the bearer token (else the `api-token` systemd credential).
    pub token_file: Option<PathBuf>,
    /// Largest accepted request body.
    pub body_limit_bytes: usize,
    /// How long a request id's response is replayed.
    pub dedup_ttl_secs: u64,
    /// Longest page of GET /runs.
    pub max_page_size: u32,
    /// Exit after this long with no HTTP request and no D-Bus call in flight or
    /// begun (socket and bus activation bring the service back); 0 never exits.
    pub idle_exit_secs: u64,
    /// How requests authenticate: `"token"` (bearer), `"hmac"` (signed), `"either"`, `"both"`.
    pub auth: String,
    /// File holding the HMAC secret (else the `api-hmac-secret` systemd credential).
    pub hmac_secret_file: Option<PathBuf>,
    /// How far a signed request's timestamp may be from now, and how long its nonce is kept.
    pub hmac_ttl_secs: u64,
    /// Requests per second one client may make to one endpoint (0 = unlimited).
    pub rate_limit_per_sec: u32,
    /// Requests a client may make at once before the rate applies.
    pub rate_limit_burst: u32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token_file: None,
            body_limit_bytes: 1024 * 1024,
            dedup_ttl_secs: 300,
            max_page_size: 500,
            idle_exit_secs: 300,
            auth: "token".into(),
            hmac_secret_file: None,
            hmac_ttl_secs: 60,
            rate_limit_per_sec: 0,
            rate_limit_burst: 50,
        }
    }
}

/// Worker settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSettings {
    /// Lease length; a worker heartbeats every third of it.
    pub lease_secs: u64,
    /// Fallback poll interval when no wake-up arrives.
    pub poll_ms: u64,
    /// Cap on stored stdout and stderr per task (the rest is dropped, with a marker).
    pub output_cap_bytes: usize,
    /// Longest wall-clock timeout a task may have; a plan asking for more is cut to it.
    pub max_task_timeout_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self { lease_secs: 30, poll_ms: 1000, output_cap_bytes: 1024 * 1024, max_task_timeout_secs: 3600 }
    }
}

/// Maintenance settings (machina-maintain).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceSettings {
    /// Finished runs are pruned this many days after they last changed (0 keeps them forever).
    pub run_retention_days: u64,
    /// Unreferenced artifacts are collected only when not stored for this long.
    pub artifact_grace_secs: u64,
    /// Artifacts hashed per verification; a larger store is covered by a rotating window.
    pub verify_sample: usize,
    /// Workers that have not checked in for this long are forgotten.
    pub worker_gone_secs: u64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self { run_retention_days: 30, artifact_grace_secs: 3600, verify_sample: 10_000, worker_gone_secs: 86_400 }
    }
}

/// Snapshot settings (machina-snapshot; parsed further by the snapshot crate).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Where snapshots live; beside the state directory, never inside it
    /// (default: `<state_dir>-snapshots`, i.e. /var/lib/machina-snapshots).
    pub dir: Option<PathBuf>,
    /// `"auto"` (btrfs when the state directory is a btrfs subvolume, else a consistent copy),
    /// `"btrfs"` or `"copy"`; a forced backend that cannot work is an error, never a silent switch.
    pub backend: String,
    /// `"daily"` or `"weekly"`: at most one scheduled snapshot per local calendar day (or week).
    pub cadence: String,
    /// Scheduled snapshots kept (the newest).
    pub keep_scheduled: usize,
    /// Manual and pre-restore snapshots kept (the newest); pinned ones are never deleted.
    pub keep_manual: usize,
    /// Where the API queues snapshot requests for the root-run snapshot service (owned by
    /// the API's user; must match machina-snapshot-requests.path).
    pub request_dir: PathBuf,
    /// Where the snapshot service answers (root-owned, readable by the API's group; must
    /// match machina-snapshot-requests.service).
    pub result_dir: PathBuf,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            dir: None,
            backend: "auto".into(),
            cadence: "daily".into(),
            keep_scheduled: 5,
            keep_manual: 10,
            request_dir: PathBuf::from("/run/machina/snapshot-requests"),
            result_dir: PathBuf::from("/run/machina-snapshot-results"),
        }
    }
}

/// D-Bus settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// `"system"` (the system bus), `"none"` (no D-Bus: workers poll), or a D-Bus address
    /// such as `"unix:path=/run/x/bus"`.
    pub address: String,
    /// Group whose members may call the manager's methods (besides root).
    pub admin_group: String,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self { address: "system".into(), admin_group: "machina-admin".into() }
    }
}

impl Settings {
    /// Load and merge every `*.toml` in `dirs`, then validate.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in dirs {
            let entries = match std::fs::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ConfigError(format!("{}: {e}", dir.display()))),
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    by_name.insert(e.file_name().to_string_lossy().into_owned(), p);
                }
            }
        }
        let mut merged = toml::Table::new();
        for path in by_name.values() {
            let table = Self::read_file(path)?;
            merge(&mut merged, table);
        }
        // The profile's defaults go under everything that was set explicitly.
        let profile = Profile::of(&merged)?;
        let mut layered = profile.defaults();
        merge(&mut layered, merged);
        let s: Settings = toml::Value::Table(layered)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("merged configuration: {e}")))?;
        s.validate()?;
        Ok(s)
    }

    fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        // Parse on its own first so an unknown key is reported against its file.
        toml::from_str::<Settings>(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }

    /// Check cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.worker.lease_secs < 3 {
            return bad("worker.lease_secs must be at least 3");
        }
        if self.worker.poll_ms == 0 {
            return bad("worker.poll_ms must be at least 1");
        }
        if self.api.body_limit_bytes < 1024 {
            return bad("api.body_limit_bytes must be at least 1024");
        }
        if !["auto", "btrfs", "copy"].contains(&self.snapshot.backend.as_str()) {
            return bad("snapshot.backend must be \"auto\", \"btrfs\" or \"copy\"");
        }
        if !["daily", "weekly"].contains(&self.snapshot.cadence.as_str()) {
            return bad("snapshot.cadence must be \"daily\" or \"weekly\"");
        }
        if self.snapshot.keep_scheduled == 0 || self.snapshot.keep_manual == 0 {
            return bad("snapshot.keep_scheduled and snapshot.keep_manual must be at least 1");
        }
        if self.maintenance.verify_sample == 0 {
            return bad("maintenance.verify_sample must be at least 1");
        }
        if self.maintenance.artifact_grace_secs < 60 {
            return bad("maintenance.artifact_grace_secs must be at least 60 (writers store before they reference)");
        }
        if self.api.hmac_ttl_secs == 0 {
            return bad("api.hmac_ttl_secs must be at least 1");
        }
        if self.bus.address.is_empty() {
            return bad("bus.address must be \"system\", \"none\" or a D-Bus address");
        }
        if self.api.max_page_size == 0 {
            return bad("api.max_page_size must be at least 1");
        }
        if !["token", "hmac", "either", "both", "none"].contains(&self.api.auth.as_str()) {
            return bad("api.auth must be \"token\", \"hmac\", \"either\", \"both\" or (dev only) \"none\"");
        }
        if self.api.auth == "none" && self.profile == Profile::Prod {
            return bad("api.auth = \"none\" is refused by profile \"prod\": configure a token or an HMAC secret");
        }
        if !["full", "normal"].contains(&self.ledger.synchronous.as_str()) {
            return bad("ledger.synchronous must be \"full\" or \"normal\"");
        }
        if self.worker.max_task_timeout_secs == 0 {
            return bad("worker.max_task_timeout_secs must be at least 1");
        }
        self.tools.validate(&self.state_dir)?;
        self.leases.validate()?;
        self.judge.validate()?;
        self.driver.validate()?;
        self.arbitration.validate()?;
        self.sandbox.validate()?;
        self.retry.validate().map_err(ConfigError)
    }
}

/// The drop-in directories a system installation reads, lowest priority first.
pub const SYSTEM_CONFIG_DIRS: [&str; 3] =
    ["/usr/lib/machina/config.d", "/etc/machina/config.d", "/run/machina/config.d"];

/// Exit status for configuration errors (EX_CONFIG); units set RestartPreventExitStatus=78.
pub const EXIT_CONFIG: u8 = 78;

/// Options every machina daemon accepts on its command line.
#[derive(Debug, Clone, Default)]
pub struct DaemonPaths {
    /// Drop-in directories; empty means [`SYSTEM_CONFIG_DIRS`].
    pub config_dirs: Vec<PathBuf>,
    /// State directory override (wins over `STATE_DIRECTORY` and the config).
    pub state_dir: Option<PathBuf>,
    /// The value of `STATE_DIRECTORY` systemd handed over, if any.
    pub systemd_state_directory: Option<String>,
}

impl Settings {
    /// Load settings the way a daemon does: drop-ins, then systemd's
    /// `STATE_DIRECTORY` (its first entry), then the command line.
    pub fn load_for_daemon(p: &DaemonPaths) -> Result<Self, ConfigError> {
        let dirs: Vec<PathBuf> = if p.config_dirs.is_empty() {
            SYSTEM_CONFIG_DIRS.iter().map(PathBuf::from).collect()
        } else {
            p.config_dirs.clone()
        };
        let mut s = Self::load(&dirs)?;
        if let Some(first) =
            p.systemd_state_directory.as_deref().and_then(|v| v.split(':').next()).filter(|v| !v.is_empty())
        {
            s.state_dir = PathBuf::from(first);
        }
        if let Some(d) = &p.state_dir {
            s.state_dir = d.clone();
        }
        Ok(s)
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Settings from one drop-in holding `text` (tests of every config module).
#[cfg(test)]
pub(crate) fn load_text(text: &str) -> Result<Settings, ConfigError> {
    let d = tempfile::tempdir().expect("temp dir");
    std::fs::write(d.path().join("x.toml"), text).expect("write drop-in");
    Settings::load(&[d.path().into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_directories_override_and_merge() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("10-base.toml"), "[api]\ndedup_ttl_secs = 60\nlisten = '127.0.0.1:1'\n").unwrap();
        std::fs::write(b.path().join("20-local.toml"), "[api]\nlisten = '127.0.0.1:2'\n").unwrap();
        let s = Settings::load(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(s.api.listen, "127.0.0.1:2");
        assert_eq!(s.api.dedup_ttl_secs, 60);
    }

    #[test]
    fn same_name_in_later_dir_replaces_the_file() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x.toml"), "[api]\ndedup_ttl_secs = 60\n").unwrap();
        std::fs::write(b.path().join("x.toml"), "[worker]\npoll_ms = 5\n").unwrap();
        let s = Settings::load(&[a.path().into(), b.path().into()]).unwrap();
        assert_eq!(s.api.dedup_ttl_secs, 300, "a's x.toml was masked entirely");
        assert_eq!(s.worker.poll_ms, 5);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("bad.toml"), "[worker]\nlease_sec = 5\n").unwrap();
        let err = Settings::load(&[a.path().into()]).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("lease_sec"), "{err}");
    }

    #[test]
    fn sandbox_section_has_defaults_and_is_validated() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x.toml"), "[sandbox]\nrequired = true\ncpu_secs = 5\n").unwrap();
        let s = Settings::load(&[a.path().into()]).unwrap();
        assert!(s.sandbox.required);
        assert_eq!((s.sandbox.cpu_secs, s.sandbox.open_files), (5, 256));
        std::fs::write(a.path().join("x.toml"), "[sandbox]\nprocesses = 2\n").unwrap();
        let err = Settings::load(&[a.path().into()]).unwrap_err().to_string();
        assert!(err.contains("sandbox.processes"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let a = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("x.toml"), "[retry]\nmax_attempts = 0\n").unwrap();
        let err = Settings::load(&[a.path().into()]).unwrap_err().to_string();
        assert!(err.contains("max_attempts"), "{err}");
    }
}
