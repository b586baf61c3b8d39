//! Settings of the tools tasks use and of the task sandbox: `[tools.*]`, `[sandbox]`,
//! and `[leases]` (which tool tiers need an admin's permission lease).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::ConfigError;

/// Tool settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolSettings {
    /// The shell tool.
    pub shell: ShellSettings,
    /// The http tool.
    pub http: HttpSettings,
    /// The file tool.
    pub file: FileSettings,
    /// External tool executables declared by manifests.
    pub plugins: PluginSettings,
}

/// The http tool: which hosts and addresses a task may reach, and how much it may fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Hosts allowed, exact or `*.example.com` (any subdomain, not the apex).
    pub allow_hosts: Vec<String>,
    /// Refuse hosts not on `allow_hosts` (prod default); when false any host may be asked
    /// for, still subject to the address checks.
    pub default_deny: bool,
    /// Private or reserved networks (CIDR) an operator explicitly opens, e.g. an internal
    /// service; every other private/reserved address is refused.
    pub allow_addresses: Vec<String>,
    /// Whole-request timeout (connect, headers and body).
    pub timeout_ms: u64,
    /// Largest response body; a longer one fails the task.
    pub max_response_bytes: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
    /// DNS servers (`ip:port`) to ask instead of the system's resolver configuration.
    pub nameservers: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            default_deny: false,
            allow_addresses: Vec::new(),
            timeout_ms: 30_000,
            max_response_bytes: 4 << 20,
            max_request_bytes: 1 << 20,
            nameservers: Vec::new(),
        }
    }
}

/// The file tool: the directories beyond a task's own that it may reach.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSettings {
    /// Declared roots, addressed by tasks as `NAME:relative/path`.
    pub roots: Vec<FileRootSettings>,
    /// Largest file a task may read.
    pub max_read_bytes: u64,
    /// Largest file a task may write.
    pub max_write_bytes: u64,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self { roots: Vec::new(), max_read_bytes: 4 << 20, max_write_bytes: 4 << 20 }
    }
}

/// One declared root of the file tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRootSettings {
    /// Name tasks use (`[a-z0-9_-]+`).
    pub name: String,
    /// Absolute directory.
    pub path: PathBuf,
    /// Whether tasks may write beneath it.
    #[serde(default)]
    pub writable: bool,
}

/// External tools declared by manifests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSettings {
    /// Directory of manifests (`*.toml`).
    pub dir: PathBuf,
    /// Capabilities a plugin may declare (FILE_READ, FILE_WRITE, SHELL, NETWORK, MEMORY);
    /// a plugin asking for more is refused.
    pub allowed_capabilities: Vec<String>,
    /// Accept a manifest without a capability list (it counts as asking for all five).
    pub allow_undeclared: bool,
    /// Address-space limit of a plugin granted MEMORY.
    pub memory_bytes: u64,
}

impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/etc/machina/plugins.d"),
            allowed_capabilities: vec!["FILE_READ".into(), "FILE_WRITE".into()],
            allow_undeclared: false,
            memory_bytes: 4 << 30,
        }
    }
}

/// Permission leases: tools above the free tier run only with an admin's single-use token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSettings {
    /// Tools at or below this tier (0 safe … 3 privileged) need no lease.
    pub free_tier: u8,
    /// Tier of each built-in tool (plugins carry theirs in their manifest).
    pub tiers: BTreeMap<String, u8>,
    /// Lifetime of a lease when the issuer gives none.
    pub default_ttl_secs: u64,
    /// Longest lifetime an issuer may ask for.
    pub max_ttl_secs: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            free_tier: 1,
            tiers: DEFAULT_TIERS.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            default_ttl_secs: 600,
            max_ttl_secs: 86_400,
        }
    }
}

/// Tier of a built-in tool: unknown tools count as privileged.
pub const UNKNOWN_TOOL_TIER: u8 = 3;

/// Built-in tools' tiers when `leases.tiers` does not name them.
pub const DEFAULT_TIERS: [(&str, u8); 3] = [("shell", 1), ("file", 1), ("http", 2)];

impl LeaseSettings {
    /// The tier of built-in tool `tool`: `leases.tiers`, else its default (a partial map
    /// in a drop-in changes only the tools it names).
    pub fn tier_of(&self, tool: &str) -> u8 {
        let default = DEFAULT_TIERS.iter().find(|(t, _)| *t == tool).map(|(_, n)| *n);
        self.tiers.get(tool).copied().or(default).unwrap_or(UNKNOWN_TOOL_TIER)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.free_tier > 3 || self.tiers.values().any(|t| *t > 3) {
            return Err(ConfigError("leases: tiers run from 0 (safe) to 3 (privileged)".into()));
        }
        if let Some(k) = self.tiers.keys().find(|k| !["shell", "http", "file"].contains(&k.as_str())) {
            return Err(ConfigError(format!(
                "leases.tiers: {k:?} is not a built-in tool (shell, http, file); plugins declare their tier in their manifest"
            )));
        }
        if self.default_ttl_secs == 0 || self.default_ttl_secs > self.max_ttl_secs {
            return Err(ConfigError("leases.default_ttl_secs must be between 1 and leases.max_ttl_secs".into()));
        }
        Ok(())
    }
}

/// Names a plugin capability may have.
pub const PLUGIN_CAPABILITIES: [&str; 5] = ["FILE_READ", "FILE_WRITE", "SHELL", "NETWORK", "MEMORY"];

impl ToolSettings {
    pub(super) fn validate(&self, state_dir: &std::path::Path) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        for p in &self.shell.allow {
            if !p.is_absolute() {
                return bad(format!("tools.shell.allow: {} is not an absolute path", p.display()));
            }
        }
        for a in &self.http.allow_addresses {
            if a.parse::<ipnet::IpNet>().is_err() {
                return bad(format!("tools.http.allow_addresses: {a:?} is not an address range like 10.1.0.0/16"));
            }
        }
        for n in &self.http.nameservers {
            if n.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!("tools.http.nameservers: {n:?} is not ip:port"));
            }
        }
        if self.http.timeout_ms == 0 || self.http.max_response_bytes == 0 {
            return bad("tools.http.timeout_ms and max_response_bytes must be at least 1".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &self.file.roots {
            let ok_name = !r.name.is_empty()
                && r.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if !ok_name || !names.insert(r.name.as_str()) {
                return bad(format!("tools.file.roots: name {:?} must be unique and [a-z0-9_-]+", r.name));
            }
            if !r.path.is_absolute() {
                return bad(format!("tools.file.roots: {} is not an absolute path", r.path.display()));
            }
            // A root holding the state directory would hand tasks the ledger.
            if state_dir.starts_with(&r.path) || r.path.starts_with(state_dir) {
                return bad(format!(
                    "tools.file.roots: {} overlaps the state directory {} (tasks would reach the ledger)",
                    r.path.display(),
                    state_dir.display()
                ));
            }
        }
        for c in &self.plugins.allowed_capabilities {
            if !PLUGIN_CAPABILITIES.contains(&c.as_str()) {
                return bad(format!(
                    "tools.plugins.allowed_capabilities: {c:?} is not one of {}",
                    PLUGIN_CAPABILITIES.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The shell tool: which executables may run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShellSettings {
    /// Executables allowed, by path as written; argv0 must name one of them exactly and
    /// still resolve to the same file. The defaults read no files (no cat, date -f, sha256sum…).
    pub allow: Vec<PathBuf>,
    /// Environment variables passed through to tasks (everything else is cleared).
    pub env_allow: Vec<String>,
}

impl Default for ShellSettings {
    fn default() -> Self {
        Self {
            allow: [
                "/usr/bin/printf",
                "/usr/bin/echo",
                "/usr/bin/uname",
                "/usr/bin/true",
                "/usr/bin/false",
                "/usr/bin/sleep",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            env_allow: vec!["LANG".into(), "TZ".into()],
        }
    }
}

/// Task sandbox settings: what every task's process is limited to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Refuse to run a task (BootFail) unless every protection is in force: landlock,
    /// TCP denied, no_new_privs, rlimits, no capabilities. Off by default while kernels
    /// without landlock are supported; the worker logs what it can enforce at startup.
    pub required: bool,
    /// RLIMIT_CPU: CPU seconds a task's process may use.
    pub cpu_secs: u64,
    /// RLIMIT_AS: address space of a task's process.
    pub address_space_bytes: u64,
    /// RLIMIT_FSIZE: largest file a task may write.
    pub file_size_bytes: u64,
    /// RLIMIT_NOFILE: open files per process.
    pub open_files: u64,
    /// RLIMIT_NPROC: counts every process of the worker's *user* (all workers and their
    /// tasks together), so it must be generous; root is exempt.
    pub processes: u64,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            required: false,
            cpu_secs: 60,
            address_space_bytes: 1 << 30,
            file_size_bytes: 64 << 20,
            open_files: 256,
            processes: 512,
        }
    }
}

impl SandboxSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(format!("sandbox.{m}")));
        if self.cpu_secs == 0 {
            return bad("cpu_secs must be at least 1");
        }
        if self.address_space_bytes < 64 << 20 {
            return bad("address_space_bytes must be at least 67108864 (64 MiB)");
        }
        if self.file_size_bytes == 0 {
            return bad("file_size_bytes must be at least 1");
        }
        if self.open_files < 16 {
            return bad("open_files must be at least 16");
        }
        if self.processes < 16 {
            return bad("processes must be at least 16 (it counts every process of the worker's user)");
        }
        Ok(())
    }
}
