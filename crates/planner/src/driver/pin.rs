//! Resolving the driver's command against `driver.allowed_executables` and
//! `driver.allowed_roots`, and pinning every file it names.
//!
//! Everything is resolved once when the driver is built and checked again before each
//! run: a path must still resolve to the same canonical file (a symlink re-pointed later is
//! refused), and a file named as an argument (the script) must still be the same inode,
//! unwritten since. The executable's identity is checked by machina-task-exec on the file
//! it execs (`--verify stat:…`), which leaves no window; the scripts' identity is checked
//! here, just before the spawn (a rewrite in the microseconds between is not seen; the
//! roots are read-only to the driver itself).

use machina_core::config::DriverSettings;
use machina_sandbox::Identity;
use std::path::{Path, PathBuf};

use super::DriverError;

/// A file of the command as it was when the driver was built.
#[derive(Debug, Clone)]
pub(super) struct PinnedFile {
    /// The path as configured.
    pub written: PathBuf,
    /// What it resolved to.
    pub canonical: PathBuf,
    /// That file's identity then.
    pub identity: Identity,
}

/// The command's files, resolved and pinned, and the canonical allowlists.
#[derive(Debug, Clone)]
pub(super) struct Pins {
    /// `command[0]`.
    pub exe: PinnedFile,
    /// Every further argument that is an absolute path.
    pub files: Vec<PinnedFile>,
    /// `driver.allowed_executables` (each already canonical).
    pub executables: Vec<PathBuf>,
    /// `driver.allowed_roots`, canonical.
    pub roots: Vec<PathBuf>,
}

impl Pins {
    /// Resolve `s.command` against the allowlists. Config: an allowlist entry is unusable;
    /// Refused: the command does not fit the allowlists.
    pub fn resolve(s: &DriverSettings) -> Result<Self, DriverError> {
        let executables: Vec<PathBuf> =
            s.allowed_executables.iter().map(|p| canonical_executable(p)).collect::<Result<_, _>>()?;
        let roots: Vec<PathBuf> = s.allowed_roots.iter().map(|p| canonical_root(p)).collect::<Result<_, _>>()?;
        let Some((argv0, args)) = s.command.split_first() else {
            return Err(DriverError::Config("driver.command is empty".into()));
        };
        let exe = pin_executable(&executables, Path::new(argv0))?;
        let files = args
            .iter()
            .filter(|a| a.starts_with('/'))
            .map(|a| pin_file(&roots, Path::new(a)))
            .collect::<Result<_, _>>()?;
        Ok(Self { exe, files, executables, roots })
    }

    /// Check that every file still resolves where it did, and that the scripts (and, when
    /// `check_exe_identity`, the executable) are still the pinned files.
    pub fn recheck(&self, check_exe_identity: bool) -> Result<(), DriverError> {
        let exe = pin_executable(&self.executables, &self.exe.written)?;
        same_file(&self.exe, &exe, "executable", check_exe_identity)?;
        for f in &self.files {
            let now = pin_file(&self.roots, &f.written)?;
            same_file(f, &now, "file", true)?;
        }
        Ok(())
    }
}

/// `written` (command[0]) must be absolute and resolve to one of `executables`.
fn pin_executable(executables: &[PathBuf], written: &Path) -> Result<PinnedFile, DriverError> {
    if !written.is_absolute() {
        return Err(refused(format!("policy driver executable {} must be an absolute path", written.display())));
    }
    let f = pin(written, "executable")?;
    if !executables.contains(&f.canonical) {
        return Err(refused(format!(
            "policy driver executable {} (resolving to {}) is not in driver.allowed_executables",
            written.display(),
            f.canonical.display()
        )));
    }
    Ok(f)
}

/// `written` (an absolute argument) must resolve to a file strictly inside one of `roots`.
fn pin_file(roots: &[PathBuf], written: &Path) -> Result<PinnedFile, DriverError> {
    let f = pin(written, "file")?;
    if !roots.iter().any(|r| f.canonical.starts_with(r) && f.canonical != *r) {
        return Err(refused(format!(
            "policy driver file {} resolves to {}, outside driver.allowed_roots ({})",
            written.display(),
            f.canonical.display(),
            roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(f)
}

fn refused(m: String) -> DriverError {
    DriverError::Refused(m)
}

/// Resolve `written` to a regular file and record its identity.
fn pin(written: &Path, what: &str) -> Result<PinnedFile, DriverError> {
    let shown = written.display();
    let canonical = std::fs::canonicalize(written)
        .map_err(|e| refused(format!("policy driver {what} {shown} cannot be resolved: {e}")))?;
    let meta = std::fs::metadata(&canonical)
        .map_err(|e| refused(format!("policy driver {what} {shown} cannot be read: {e}")))?;
    if !meta.is_file() {
        return Err(refused(format!("policy driver {what} {shown} is not a regular file")));
    }
    Ok(PinnedFile { written: written.to_path_buf(), canonical, identity: Identity::of(&meta) })
}

/// `now` must be `was`: the same canonical path and (if `identity`) the same file.
fn same_file(was: &PinnedFile, now: &PinnedFile, what: &str, identity: bool) -> Result<(), DriverError> {
    if now.canonical != was.canonical {
        return Err(refused(format!(
            "policy driver {what} {} now resolves to {}, not {} as when the driver was loaded",
            was.written.display(),
            now.canonical.display(),
            was.canonical.display()
        )));
    }
    if identity && now.identity != was.identity {
        return Err(refused(format!(
            "policy driver {what} {} was replaced or modified after the driver was loaded (expected stat:{}, \
             actual stat:{}); restart the worker to accept the new file",
            was.canonical.display(),
            was.identity,
            now.identity
        )));
    }
    Ok(())
}

fn canonical_executable(p: &Path) -> Result<PathBuf, DriverError> {
    let c = std::fs::canonicalize(p)
        .map_err(|e| DriverError::Config(format!("driver.allowed_executables: {}: {e}", p.display())))?;
    if c != p {
        return Err(DriverError::Config(format!(
            "driver.allowed_executables: {} is not a canonical path; write {} (what it resolves to)",
            p.display(),
            c.display()
        )));
    }
    if !c.is_file() {
        return Err(DriverError::Config(format!("driver.allowed_executables: {} is not a regular file", p.display())));
    }
    Ok(c)
}

fn canonical_root(p: &Path) -> Result<PathBuf, DriverError> {
    let c = std::fs::canonicalize(p)
        .map_err(|e| DriverError::Config(format!("driver.allowed_roots: {}: {e}", p.display())))?;
    if !c.is_dir() || c.parent().is_none() {
        return Err(DriverError::Config(format!(
            "driver.allowed_roots: {} is not a directory other than /",
            p.display()
        )));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        sh: String,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("drv.sh"), "exit 0\n").unwrap();
        let outside = base.join("outside.sh");
        std::fs::write(&outside, "exit 0\n").unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap().to_str().unwrap().to_owned();
        Fixture { _tmp: tmp, root, outside, sh }
    }

    fn settings(f: &Fixture, command: &[&str]) -> DriverSettings {
        DriverSettings {
            command: command.iter().map(|s| s.to_string()).collect(),
            allowed_executables: vec![PathBuf::from(&f.sh)],
            allowed_roots: vec![f.root.clone()],
            ..DriverSettings::default()
        }
    }

    fn script(f: &Fixture) -> String {
        f.root.join("drv.sh").to_str().unwrap().to_owned()
    }

    #[test]
    fn a_fitting_command_resolves_and_rechecks() {
        let f = fixture();
        let pins = Pins::resolve(&settings(&f, &[&f.sh, &script(&f), "--flag", "rel/x"])).unwrap();
        assert_eq!(pins.exe.canonical, PathBuf::from(&f.sh));
        assert_eq!(pins.files.len(), 1, "only absolute arguments are files");
        pins.recheck(true).unwrap();
    }

    #[test]
    fn executables_off_the_list_or_relative_are_refused() {
        let f = fixture();
        for argv0 in ["/usr/bin/env", "sh"] {
            let e = Pins::resolve(&settings(&f, &[argv0, &script(&f)])).unwrap_err();
            assert_eq!(e.kind(), "driver_refused", "{argv0}: {e}");
        }
        // /bin/sh is a symlink to the allowed file: allowed, as what it resolves to.
        if Path::new("/bin/sh").is_symlink() {
            Pins::resolve(&settings(&f, &["/bin/sh", &script(&f)])).unwrap();
        }
    }

    #[test]
    fn allowlist_entries_must_be_canonical_existing_files() {
        let f = fixture();
        let mut s = settings(&f, &[&f.sh, &script(&f)]);
        let link = f.root.join("sh-link");
        std::os::unix::fs::symlink(&f.sh, &link).unwrap();
        s.allowed_executables = vec![link];
        let e = Pins::resolve(&s).unwrap_err();
        assert_eq!(e.kind(), "driver_config");
        assert!(e.to_string().contains(&format!("write {}", f.sh)), "{e}");
        s.allowed_executables = vec![f.root.clone()];
        assert!(Pins::resolve(&s).unwrap_err().to_string().contains("not a regular file"));
        let mut s = settings(&f, &[&f.sh]);
        s.allowed_roots = vec![f.root.join("missing")];
        assert_eq!(Pins::resolve(&s).unwrap_err().kind(), "driver_config");
    }

    #[test]
    fn files_outside_the_roots_are_refused_even_through_a_symlink() {
        let f = fixture();
        let outside = f.outside.to_str().unwrap();
        let e = Pins::resolve(&settings(&f, &[&f.sh, outside])).unwrap_err();
        assert!(e.to_string().contains("outside driver.allowed_roots"), "{e}");
        let link = f.root.join("link.sh");
        std::os::unix::fs::symlink(&f.outside, &link).unwrap();
        let e = Pins::resolve(&settings(&f, &[&f.sh, link.to_str().unwrap()])).unwrap_err();
        assert_eq!(e.kind(), "driver_refused");
        let e = Pins::resolve(&settings(&f, &[&f.sh, f.root.to_str().unwrap()])).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dotdot = format!("{}/../outside.sh", f.root.display());
        assert_eq!(Pins::resolve(&settings(&f, &[&f.sh, &dotdot])).unwrap_err().kind(), "driver_refused");
    }

    #[test]
    fn a_repointed_symlink_or_rewritten_script_is_refused_at_recheck() {
        let f = fixture();
        let link = f.root.join("current.sh");
        std::fs::write(f.root.join("v2.sh"), "exit 0\n").unwrap();
        std::os::unix::fs::symlink(f.root.join("drv.sh"), &link).unwrap();
        let pins = Pins::resolve(&settings(&f, &[&f.sh, link.to_str().unwrap()])).unwrap();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(f.root.join("v2.sh"), &link).unwrap();
        let e = pins.recheck(false).unwrap_err();
        assert!(e.to_string().contains("now resolves to"), "{e}");

        let pins = Pins::resolve(&settings(&f, &[&f.sh, &script(&f)])).unwrap();
        std::fs::write(f.root.join("drv.sh"), "exit 10\n").unwrap();
        let e = pins.recheck(false).unwrap_err();
        assert!(e.to_string().contains("was replaced or modified"), "{e}");
    }
}
