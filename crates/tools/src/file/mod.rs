//! The `file` tool: reads, writes and lists files for a hostile task, confined to the
//! task's directory or to roots the operator declared.
//!
//! The worker runs this as the machina user, which can read the ledger, so every
//! path the task names is resolved through a cap-std [`Dir`] handle opened on the
//! root: resolution stays beneath that directory and fails on any escape, whether by
//! `..`, an absolute symlink, or a symlink anywhere along the path. The textual rules
//! of the `path` submodule reject the obvious tricks early with a clear message; the
//! handles are what actually hold the line.
//!
//! # Paths
//!
//! - `notes/a.txt` — relative to the task's directory.
//! - `data:notes/a.txt` — relative to the declared root named `data`; `data:` alone is
//!   the root itself. A colon in the first component always means a root name, so a
//!   task file whose first component has a colon is spelled `./a:b`.
//! - Absolute paths are refused (the task never needs to know where a root lives on
//!   the host), as is any `..` component, an empty path and a NUL byte.
//!
//! # Error kinds
//!
//! [`FileError::kind`] maps onto machina's task failure codes ([`ErrCode`]):
//! `Denied`, `Invalid` and `TooLarge` are `POLICY_DENIED` (the request was refused
//! before or instead of doing anything — a malformed call is refused like a forbidden
//! one, and the limits are policy); `NotFound` and `Io` are `CMD_NONZERO` (the
//! operation itself failed, as `cat missing` would). None of them is retried by the
//! default retry policy.

mod ops;
mod path;
mod write;

use cap_std::fs::Dir;
use machina_core::ErrCode;
use std::io;
use std::path::{Path, PathBuf};

/// Where a task may read and write besides its own directory, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePolicy {
    /// Operator-declared roots, addressed as `NAME:relative/path`.
    pub roots: Vec<FileRoot>,
    /// Largest file a read returns (and largest listing output), in bytes.
    pub max_read_bytes: u64,
    /// Largest content a write accepts, in bytes.
    pub max_write_bytes: u64,
}

/// One operator-declared directory a task may address by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRoot {
    /// The name tasks use before the colon, e.g. `data` in `data:in/a.csv`.
    pub name: String,
    /// Where the root lives on the host; never shown to the task.
    pub path: PathBuf,
    /// Whether tasks may write beneath it.
    pub writable: bool,
}

impl FilePolicy {
    /// Check the roots: names are non-empty, unique, and free of `:`, `/` and NUL,
    /// and paths are absolute. Call this when loading configuration.
    pub fn validate(&self) -> Result<(), FileError> {
        for (i, root) in self.roots.iter().enumerate() {
            let name = &root.name;
            if name.is_empty() || name.contains([':', '/', '\0']) {
                return Err(FileError::Invalid(format!(
                    "file root name {name:?} must be non-empty and contain no ':', '/' or NUL"
                )));
            }
            if self.roots[..i].iter().any(|r| r.name == *name) {
                return Err(FileError::Invalid(format!("file root {name:?} is declared twice")));
            }
            if !root.path.is_absolute() {
                return Err(FileError::Invalid(format!(
                    "file root {name:?} has a relative path {}; give an absolute one",
                    root.path.display()
                )));
            }
        }
        Ok(())
    }
}

/// One file operation, as parsed from the task's argv by [`op_from_argv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    /// Return a regular file's bytes.
    Read {
        /// The path as the task wrote it.
        path: String,
    },
    /// Atomically replace (or create) a file, keeping the previous version as `NAME.bak`.
    Write {
        /// The path as the task wrote it.
        path: String,
        /// The new content.
        content: Vec<u8>,
    },
    /// List one directory, without recursion.
    List {
        /// The path as the task wrote it (`.` for the task's directory).
        path: String,
    },
}

/// What an operation returns to the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOutcome {
    /// read: the file's bytes; list: one `name\tkind\tsize\n` line per entry, sorted
    /// by name (kind is `file`, `dir`, `symlink` or `other`; control characters,
    /// backslashes and invalid UTF-8 in names are escaped); write: a one-line summary
    /// with the byte count and the sha256 of the written bytes.
    pub stdout: Vec<u8>,
}

/// Why a file operation was refused or failed. Messages name the path as the task
/// wrote it, never a host path.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    /// The policy forbids it: an escape from the root, a symlink leading out, an
    /// undeclared root, a write to a read-only root.
    #[error("denied: {0}")]
    Denied(String),
    /// The call itself is malformed: bad argv, empty path, NUL byte, wrong file type.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The path does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Over `max_read_bytes` or `max_write_bytes`.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The filesystem failed (disk full, permissions on the host, ...).
    #[error("i/o error: {0}")]
    Io(String),
}

impl FileError {
    /// The task failure code this error records (see the module docs for why).
    pub fn err_code(&self) -> ErrCode {
        match self {
            Self::Denied(_) | Self::Invalid(_) | Self::TooLarge(_) => ErrCode::PolicyDenied,
            Self::NotFound(_) | Self::Io(_) => ErrCode::CmdNonzero,
        }
    }

    /// The stable string of [`Self::err_code`]: `POLICY_DENIED` or `CMD_NONZERO`.
    pub fn kind(&self) -> &'static str {
        self.err_code().as_str()
    }

    /// Classify an I/O error on `shown` (the task's spelling of the path) while doing `what`.
    fn from_io(what: &str, shown: &str, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => Self::NotFound(format!("{what} {shown}: no such file or directory")),
            // cap-std reports every escape (.., absolute or outward symlinks) as
            // PermissionDenied, and so does the kernel for a file we may not touch.
            io::ErrorKind::PermissionDenied => {
                Self::Denied(format!("{what} {shown}: {e} (paths and symlinks must stay inside their root)"))
            }
            io::ErrorKind::NotADirectory => Self::Invalid(format!("{what} {shown}: not a directory")),
            io::ErrorKind::IsADirectory => Self::Invalid(format!("{what} {shown}: is a directory")),
            _ => Self::Io(format!("{what} {shown}: {e}")),
        }
    }
}

const USAGE: &str = "expected `read PATH`, `write PATH CONTENT` or `list [PATH]`";

/// Parse the task's argv: `["read", PATH]`, `["write", PATH, CONTENT]`, `["list"]`
/// or `["list", PATH]`. Anything else is [`FileError::Invalid`].
pub fn op_from_argv(argv: &[String]) -> Result<FileOp, FileError> {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["read", path] => Ok(FileOp::Read { path: (*path).to_owned() }),
        ["write", path, content] => {
            Ok(FileOp::Write { path: (*path).to_owned(), content: content.as_bytes().to_vec() })
        }
        ["list"] => Ok(FileOp::List { path: ".".to_owned() }),
        ["list", path] => Ok(FileOp::List { path: (*path).to_owned() }),
        [] => Err(FileError::Invalid(format!("empty argv: {USAGE}"))),
        [op @ ("read" | "write" | "list"), ..] => {
            Err(FileError::Invalid(format!("wrong number of arguments for {op}: {USAGE}")))
        }
        [op, ..] => Err(FileError::Invalid(format!("unknown file operation {op:?}: {USAGE}"))),
    }
}

/// Carry out `op` for the task whose directory is `task_dir`, under `policy`.
///
/// Blocking: the worker calls it on `spawn_blocking`.
pub fn perform(policy: &FilePolicy, task_dir: &Path, op: &FileOp) -> Result<FileOutcome, FileError> {
    match op {
        FileOp::Read { path } => {
            let target = path::resolve(policy, path)?;
            let dir = open_root(task_dir, &target)?;
            ops::read(&dir, &target, policy.max_read_bytes)
        }
        FileOp::Write { path, content } => {
            let target = path::resolve(policy, path)?;
            if !target.writable {
                return Err(FileError::Denied(format!("write {path}: root {} is read-only", target.root_label())));
            }
            let len = content.len() as u64;
            if len > policy.max_write_bytes {
                return Err(FileError::TooLarge(format!(
                    "write {path}: {len} bytes is over the limit of {} bytes",
                    policy.max_write_bytes
                )));
            }
            let dir = open_root(task_dir, &target)?;
            write::write(&dir, &target, content)
        }
        FileOp::List { path } => {
            let target = path::resolve(policy, path)?;
            let dir = open_root(task_dir, &target)?;
            ops::list(&dir, &target, policy.max_read_bytes)
        }
    }
}

/// Open the directory handle every path of `target` is resolved beneath.
fn open_root(task_dir: &Path, target: &path::Target<'_>) -> Result<Dir, FileError> {
    let host = target.root.map_or(task_dir, |r| r.path.as_path());
    Dir::open_ambient_dir(host, cap_std::ambient_authority())
        // An unusable root is the operator's or the worker's problem, not a missing file.
        .map_err(|e| FileError::Io(format!("cannot open root {}: {e}", target.root_label())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn argv_shapes() {
        assert_eq!(op_from_argv(&argv(&["read", "a"])).unwrap(), FileOp::Read { path: "a".into() });
        assert_eq!(
            op_from_argv(&argv(&["write", "a", "hi"])).unwrap(),
            FileOp::Write { path: "a".into(), content: b"hi".to_vec() }
        );
        assert_eq!(op_from_argv(&argv(&["list"])).unwrap(), FileOp::List { path: ".".into() });
        assert_eq!(op_from_argv(&argv(&["list", "d"])).unwrap(), FileOp::List { path: "d".into() });
    }

    #[test]
    fn bad_argv_is_invalid_and_says_what_is_expected() {
        for bad in [&[][..], &["read"], &["read", "a", "b"], &["write", "a"], &["list", "a", "b"], &["rm", "a"]] {
            let e = op_from_argv(&argv(bad)).unwrap_err();
            assert!(matches!(e, FileError::Invalid(_)), "{bad:?}: {e}");
            assert!(e.to_string().contains("read PATH"), "{e}");
            assert_eq!(e.kind(), "POLICY_DENIED");
        }
    }

    #[test]
    fn kinds_map_onto_err_codes() {
        assert_eq!(FileError::Denied(String::new()).kind(), "POLICY_DENIED");
        assert_eq!(FileError::TooLarge(String::new()).kind(), "POLICY_DENIED");
        assert_eq!(FileError::NotFound(String::new()).kind(), "CMD_NONZERO");
        assert_eq!(FileError::Io(String::new()).kind(), "CMD_NONZERO");
    }

    /// The textual rules refuse `..` and absolute paths before cap-std sees them; this
    /// checks the handle layer would hold on its own.
    #[test]
    fn the_dir_handle_alone_refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let task = tmp.path().join("task");
        std::fs::create_dir_all(task.join("a")).unwrap();
        std::fs::write(tmp.path().join("ledger.db"), "secret").unwrap();
        std::os::unix::fs::symlink("..", task.join("up")).unwrap();
        let dir = Dir::open_ambient_dir(&task, cap_std::ambient_authority()).unwrap();
        for path in ["../ledger.db", "a/../../ledger.db", "up/ledger.db", "/etc/passwd"] {
            let e = dir.open(path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "open {path}: {e}");
        }
        for path in ["../x", "up/x"] {
            assert!(dir.create_dir_all(path).is_err(), "mkdir {path}");
            assert!(dir.write(path, "x").is_err(), "write {path}");
        }
        dir.write("t", "x").unwrap();
        assert!(dir.rename("t", &dir, "../planted").is_err());
        assert!(!tmp.path().join("x").exists() && !tmp.path().join("planted").exists());
    }

    #[test]
    fn validate_rejects_bad_roots() {
        let root = |name: &str, path: &str| FileRoot { name: name.into(), path: path.into(), writable: false };
        let policy = |roots| FilePolicy { roots, max_read_bytes: 1, max_write_bytes: 1 };
        assert!(policy(vec![root("data", "/srv/data"), root("out", "/srv/out")]).validate().is_ok());
        for bad in [
            vec![root("", "/x")],
            vec![root("a:b", "/x")],
            vec![root("a/b", "/x")],
            vec![root("a", "/x"), root("a", "/y")],
            vec![root("a", "rel")],
        ] {
            assert!(matches!(policy(bad.clone()).validate(), Err(FileError::Invalid(_))), "{bad:?}");
        }
    }
}
