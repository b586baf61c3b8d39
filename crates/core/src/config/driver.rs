//! `[driver]`: the external policy driver, a plan source.
//!
//! The driver is a command the operator configures: it reads `{"intent": …, "recipe": …}`
//! as JSON on stdin and prints a plan as JSON on stdout, inside the task sandbox
//! (machina-planner runs it). These settings are checked here for what needs no
//! filesystem; machina-planner resolves the paths against the allowlists when the driver
//! is built and again before every run.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::ConfigError;

/// Largest `stdout_cap_bytes`: the plan is held in memory while it is parsed.
pub const DRIVER_MAX_STDOUT_CAP_BYTES: u64 = 64 << 20;
/// Largest `stderr_cap_bytes`: only the tail is kept, for error messages.
pub const DRIVER_MAX_STDERR_CAP_BYTES: u64 = 16 << 20;
/// Longest `timeout_ms` (one hour): a step waits on the driver.
pub const DRIVER_MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Smallest `address_space_bytes` (as `[sandbox]`): below it nothing dynamic starts.
pub const DRIVER_MIN_ADDRESS_SPACE_BYTES: u64 = 64 << 20;

/// External policy driver settings.
///
/// A driver never gets network: its sandbox denies TCP bind and connect, and there is no
/// setting to allow it (a `network` key is an unknown key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverSettings {
    /// The driver's argv; empty (the default) means no driver is configured. `command[0]`
    /// must be an absolute path resolving to an entry of `allowed_executables`; every
    /// further argument that is an absolute path (the script of an interpreter, a data
    /// file) must resolve to a file inside one of `allowed_roots`. Other arguments
    /// (flags, relative names) are passed as they are.
    pub command: Vec<String>,
    /// Executables the driver may be and may execute: interpreters or binaries, as
    /// canonical absolute paths (no symlink: `/bin/sh` is written as what it resolves to,
    /// e.g. `/usr/bin/dash`). Inside the sandbox nothing else can be executed.
    pub allowed_executables: Vec<PathBuf>,
    /// Directories the driver's scripts live in (absolute; not `/`). The driver may read
    /// beneath them, never write.
    pub allowed_roots: Vec<PathBuf>,
    /// Wall-clock limit of one run in milliseconds; the driver's process group is killed
    /// after it.
    pub timeout_ms: u64,
    /// Most bytes the driver may print on stdout; more kills it and fails the step.
    pub stdout_cap_bytes: u64,
    /// Bytes of the driver's stderr kept (the last ones), for error messages.
    pub stderr_cap_bytes: u64,
    /// RLIMIT_CPU of the driver in seconds (default: the sandbox default, 60).
    pub cpu_secs: Option<u64>,
    /// RLIMIT_AS of the driver in bytes (default: the sandbox default, 1 GiB).
    pub address_space_bytes: Option<u64>,
}

impl Default for DriverSettings {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            allowed_executables: Vec::new(),
            allowed_roots: Vec::new(),
            timeout_ms: 10_000,
            stdout_cap_bytes: 1 << 20,
            stderr_cap_bytes: 64 << 10,
            cpu_secs: None,
            address_space_bytes: None,
        }
    }
}

impl DriverSettings {
    /// Whether a driver is configured.
    pub fn is_configured(&self) -> bool {
        !self.command.is_empty()
    }

    /// Check what needs no filesystem (machina-planner checks the paths themselves).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(format!("driver.{m}")));
        if self.timeout_ms == 0 || self.timeout_ms > DRIVER_MAX_TIMEOUT_MS {
            return bad(format!("timeout_ms must be between 1 and {DRIVER_MAX_TIMEOUT_MS}"));
        }
        if self.stdout_cap_bytes == 0 || self.stdout_cap_bytes > DRIVER_MAX_STDOUT_CAP_BYTES {
            return bad(format!("stdout_cap_bytes must be between 1 and {DRIVER_MAX_STDOUT_CAP_BYTES}"));
        }
        if self.stderr_cap_bytes > DRIVER_MAX_STDERR_CAP_BYTES {
            return bad(format!("stderr_cap_bytes must be at most {DRIVER_MAX_STDERR_CAP_BYTES}"));
        }
        if self.cpu_secs == Some(0) {
            return bad("cpu_secs must be at least 1".into());
        }
        if self.address_space_bytes.is_some_and(|b| b < DRIVER_MIN_ADDRESS_SPACE_BYTES) {
            return bad(format!("address_space_bytes must be at least {DRIVER_MIN_ADDRESS_SPACE_BYTES} (64 MiB)"));
        }
        for p in &self.allowed_executables {
            if !p.is_absolute() {
                return bad(format!("allowed_executables: {} is not an absolute path", p.display()));
            }
        }
        for p in &self.allowed_roots {
            if !p.is_absolute() || p.parent().is_none() {
                return bad(format!("allowed_roots: {} must be an absolute directory other than /", p.display()));
            }
        }
        self.validate_command()
    }

    fn validate_command(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(format!("driver.command: {m}")));
        let Some(argv0) = self.command.first() else { return Ok(()) };
        if let Some(a) = self.command.iter().find(|a| a.contains('\0')) {
            return bad(format!("argument {a:?} contains a NUL byte"));
        }
        if !argv0.starts_with('/') {
            return bad(format!("{argv0:?} must be an absolute path (an entry of driver.allowed_executables)"));
        }
        if self.allowed_executables.is_empty() {
            return bad("is set but driver.allowed_executables is empty: list the driver's executable".into());
        }
        let takes_a_path = self.command[1..].iter().any(|a| a.starts_with('/'));
        if takes_a_path && self.allowed_roots.is_empty() {
            return bad("names a file but driver.allowed_roots is empty: list the directory holding it".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn driver(toml_text: &str) -> Result<DriverSettings, String> {
        let s: Settings = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        s.driver.validate().map_err(|e| e.to_string())?;
        Ok(s.driver)
    }

    #[test]
    fn defaults_configure_no_driver_and_are_valid() {
        let d = driver("").unwrap();
        assert!(!d.is_configured());
        assert_eq!((d.timeout_ms, d.stdout_cap_bytes, d.stderr_cap_bytes), (10_000, 1 << 20, 64 << 10));
        assert_eq!((d.cpu_secs, d.address_space_bytes), (None, None));
    }

    #[test]
    fn a_full_section_parses() {
        let d = driver(
            "[driver]\ncommand = ['/usr/bin/python3.11', '/opt/drv/plan.py', '--fast']\n\
             allowed_executables = ['/usr/bin/python3.11']\nallowed_roots = ['/opt/drv']\n\
             timeout_ms = 500\nstdout_cap_bytes = 4096\nstderr_cap_bytes = 0\ncpu_secs = 5\n\
             address_space_bytes = 268435456\n",
        )
        .unwrap();
        assert!(d.is_configured());
        assert_eq!(d.command.len(), 3);
        assert_eq!((d.cpu_secs, d.address_space_bytes), (Some(5), Some(256 << 20)));
    }

    #[test]
    fn there_is_no_network_setting() {
        let e = driver("[driver]\nnetwork = true\n").unwrap_err();
        assert!(e.contains("unknown field `network`"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        let base = "[driver]\nallowed_executables = ['/usr/bin/dash']\nallowed_roots = ['/opt/drv']\n";
        for (extra, expected) in [
            ("timeout_ms = 0", "driver.timeout_ms"),
            ("timeout_ms = 3600001", "driver.timeout_ms"),
            ("stdout_cap_bytes = 0", "driver.stdout_cap_bytes"),
            ("stdout_cap_bytes = 67108865", "driver.stdout_cap_bytes"),
            ("stderr_cap_bytes = 16777217", "driver.stderr_cap_bytes"),
            ("cpu_secs = 0", "driver.cpu_secs"),
            ("address_space_bytes = 1024", "driver.address_space_bytes"),
            ("command = ['dash', '/opt/drv/x']", "must be an absolute path"),
            ("command = ['/usr/bin/dash', \"a\\u0000b\"]", "NUL"),
        ] {
            let e = driver(&format!("{base}{extra}\n")).unwrap_err();
            assert!(e.contains(expected), "{extra}: {e}");
        }
        for (text, expected) in [
            ("[driver]\nallowed_executables = ['dash']\n", "allowed_executables: dash"),
            ("[driver]\nallowed_roots = ['opt']\n", "allowed_roots: opt"),
            ("[driver]\nallowed_roots = ['/']\n", "other than /"),
            ("[driver]\ncommand = ['/usr/bin/dash']\n", "allowed_executables is empty"),
            (
                "[driver]\ncommand = ['/usr/bin/dash', '/opt/x.sh']\nallowed_executables = ['/usr/bin/dash']\n",
                "allowed_roots is empty",
            ),
        ] {
            let e = driver(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn settings_load_validates_the_section() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d.toml"), "[driver]\ntimeout_ms = 0\n").unwrap();
        let e = Settings::load(&[dir.path().into()]).unwrap_err().to_string();
        assert!(e.contains("driver.timeout_ms"), "{e}");
    }
}
