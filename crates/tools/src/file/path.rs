//! Turning a task's path string into a root and a clean relative path.
//!
//! These textual rules are the first line: they refuse the obvious (absolute paths,
//! `..`, NUL, unknown roots) with a message that says what to do instead. They do not
//! look at the filesystem; symlinks are left to the cap-std handle the path is later
//! resolved beneath.

use super::{FileError, FilePolicy, FileRoot};
use std::path::PathBuf;

/// A task path resolved against the policy, not yet against the filesystem.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// The declared root, or `None` for the task's directory.
    pub root: Option<&'a FileRoot>,
    /// Normal components only; empty means the root itself.
    pub rel: PathBuf,
    /// The path as the task wrote it, for messages.
    pub shown: String,
    /// Whether writes are allowed beneath the root.
    pub writable: bool,
}

impl Target<'_> {
    /// How messages name the root (never its host path).
    pub fn root_label(&self) -> String {
        match self.root {
            Some(r) => format!("{:?}", r.name),
            None => "the task directory".to_owned(),
        }
    }

    /// The relative path to hand to cap-std: `.` for the root itself.
    pub fn rel_or_dot(&self) -> PathBuf {
        if self.rel.as_os_str().is_empty() { PathBuf::from(".") } else { self.rel.clone() }
    }
}

/// Resolve `raw` (`rel/path` or `ROOT:rel/path`) against `policy`.
pub(crate) fn resolve<'a>(policy: &'a FilePolicy, raw: &str) -> Result<Target<'a>, FileError> {
    if raw.is_empty() {
        return Err(FileError::Invalid("empty path: name a file relative to the task directory".into()));
    }
    if raw.contains('\0') {
        return Err(FileError::Invalid(format!("path {raw:?} contains a NUL byte")));
    }
    if raw.starts_with('/') {
        return Err(FileError::Denied(format!(
            "absolute path {raw}: use a path relative to the task directory, or ROOT:path for a declared root{}",
            declared(policy)
        )));
    }
    let first = raw.split('/').next().unwrap_or_default();
    let (root, rest) = match first.split_once(':') {
        None => (None, raw),
        Some((name, _)) => {
            let rest = &raw[name.len() + 1..];
            let root = policy.roots.iter().find(|r| r.name == name).ok_or_else(|| {
                FileError::Denied(format!("{raw}: there is no declared root named {name:?}{}", declared(policy)))
            })?;
            if rest.starts_with('/') {
                return Err(FileError::Denied(format!(
                    "{raw}: the part after {name}: must be relative to the root, not absolute"
                )));
            }
            (Some(root), rest)
        }
    };
    let mut rel = PathBuf::new();
    for component in rest.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(FileError::Denied(format!("{raw}: '..' is not allowed in paths; name the file directly")));
            }
            name => rel.push(name),
        }
    }
    Ok(Target { root, rel, shown: raw.to_owned(), writable: root.is_none_or(|r| r.writable) })
}

/// ` (declared roots: a, b)` or ` (no roots are declared)`, to help the task correct itself.
fn declared(policy: &FilePolicy) -> String {
    if policy.roots.is_empty() {
        " (no roots are declared)".to_owned()
    } else {
        let names: Vec<&str> = policy.roots.iter().map(|r| r.name.as_str()).collect();
        format!(" (declared roots: {})", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FilePolicy {
        let root = |name: &str, writable| FileRoot { name: name.into(), path: format!("/srv/{name}").into(), writable };
        FilePolicy { roots: vec![root("data", false), root("out", true)], max_read_bytes: 10, max_write_bytes: 10 }
    }

    #[test]
    fn task_relative_paths_are_normalised() {
        let p = policy();
        for (raw, want) in [("a.txt", "a.txt"), ("./a/./b", "a/b"), ("a//b/", "a/b"), (".", ""), ("./x:y", "x:y")] {
            let t = resolve(&p, raw).unwrap();
            assert!(t.root.is_none(), "{raw}");
            assert!(t.writable);
            assert_eq!(t.rel, PathBuf::from(want), "{raw}");
        }
    }

    #[test]
    fn root_prefixed_paths_pick_the_root() {
        let p = policy();
        let t = resolve(&p, "data:in/a.csv").unwrap();
        assert_eq!((t.root.unwrap().name.as_str(), t.rel.to_str().unwrap(), t.writable), ("data", "in/a.csv", false));
        let t = resolve(&p, "out:").unwrap();
        assert_eq!((t.root.unwrap().name.as_str(), t.rel_or_dot(), t.writable), ("out", PathBuf::from("."), true));
        // A colon after the first component is part of a name, not a root.
        let t = resolve(&p, "a/b:c").unwrap();
        assert!(t.root.is_none());
        assert_eq!(t.rel, PathBuf::from("a/b:c"));
    }

    #[test]
    fn escapes_and_junk_are_refused() {
        let p = policy();
        for raw in ["..", "../x", "a/../../x", "./../x", "a/..", "data:../x", "data:a/../b", "/etc/passwd", "data:/etc"]
        {
            assert!(matches!(resolve(&p, raw), Err(FileError::Denied(_))), "{raw}");
        }
        for raw in ["", "a\0b"] {
            assert!(matches!(resolve(&p, raw), Err(FileError::Invalid(_))), "{raw:?}");
        }
        let e = resolve(&p, "nope:x").unwrap_err();
        assert!(e.to_string().contains("declared roots: data, out"), "{e}");
        assert!(matches!(resolve(&p, ":x"), Err(FileError::Denied(_))));
    }
}
