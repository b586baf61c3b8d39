//! `write`: replace a file atomically, keeping the previous version as `NAME.bak`.
//!
//! The new bytes go to a fresh temp file (`.NAME.tmp-<random>`, created exclusively, so
//! a planted file or symlink of that name is never reused) beside the target, and are
//! fsynced; the previous version is hard-linked to `NAME.bak`; the temp file is renamed
//! over the target; the directory is fsynced. A crash at any point leaves either the old
//! or the new file in place, never a torn one, plus at most a stray temp file. No step
//! opens an existing file for writing — renames replace directory entries — so a write
//! never goes through a symlink or into a hard-linked inode, even one swapped in mid-way.

use super::path::Target;
use super::{FileError, FileOutcome};
use cap_fs_ext::OpenOptionsMaybeDirExt;
use cap_std::fs::{Dir, File, Metadata, OpenOptions, PermissionsExt};
use sha2::{Digest, Sha256};
use std::ffi::{OsStr, OsString};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicU64, Ordering};

/// Tries at a fresh temp name before giving up (a clash means the name was planted).
const TEMP_NAME_TRIES: u32 = 8;
/// How much of NAME goes into a temp name, so `.NAME.tmp-<16 hex>` stays under NAME_MAX.
const TEMP_NAME_STEM_BYTES: usize = 200;

/// Write `content` to `target` beneath `dir`, creating parent directories as needed.
pub(crate) fn write(dir: &Dir, target: &Target<'_>, content: &[u8]) -> Result<FileOutcome, FileError> {
    let shown = &target.shown;
    let io = |e| FileError::from_io("write", shown, e);
    // A trailing `/` or `/.` names a directory even when the last real component would
    // make a file name.
    let names_dir = shown == "." || shown.ends_with('/') || shown.ends_with("/.");
    let name = match target.rel.file_name() {
        Some(name) if !names_dir => name,
        _ => return Err(FileError::Invalid(format!("write {shown}: name a file, not a directory"))),
    };
    let parent = match target.rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        // Open first: create_dir_all on a symlink leading out reports a bare EEXIST,
        // where open_dir reports the escape.
        Some(p) => match dir.open_dir(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                dir.create_dir_all(p).and_then(|()| dir.open_dir(p)).map_err(io)?
            }
            opened => opened.map_err(io)?,
        },
        None => dir.try_clone().map_err(io)?,
    };
    let previous = existing(&parent, name, shown)?;
    let (tmp_name, tmp) = create_temp(&parent, name).map_err(io)?;
    let replaced = fill(tmp, content, previous.as_ref())
        .map_err(io)
        .and_then(|()| match previous {
            Some(_) => backup(&parent, name).map_err(|e| {
                FileError::Io(format!("write {shown}: cannot keep the previous version as {shown}.bak: {e}"))
            }),
            None => Ok(()),
        })
        .and_then(|()| parent.rename(&tmp_name, &parent, name).map_err(io));
    if let Err(e) = replaced {
        // Best effort: a stray temp file is harmless, but tidy up when we can.
        let _ = parent.remove_file(&tmp_name);
        return Err(e);
    }
    sync_dir(&parent).map_err(io)?;
    let mut summary =
        format!("wrote {} bytes to {shown} sha256:{}", content.len(), hex::encode(Sha256::digest(content)));
    if previous.is_some() {
        summary.push_str(&format!(" (previous version kept as {shown}.bak)"));
    }
    summary.push('\n');
    Ok(FileOutcome { stdout: summary.into_bytes() })
}

/// The current target, if any; a symlink or anything but a regular file is refused.
fn existing(parent: &Dir, name: &OsStr, shown: &str) -> Result<Option<Metadata>, FileError> {
    match parent.symlink_metadata(name) {
        Ok(m) if m.file_type().is_symlink() => {
            Err(FileError::Denied(format!("write {shown}: is a symlink, and writes never follow symlinks")))
        }
        Ok(m) if !m.is_file() => Err(FileError::Invalid(format!("write {shown}: exists and is not a regular file"))),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::from_io("write", shown, e)),
    }
}

/// Create `.NAME.<tag>-<random>` exclusively in `parent`.
fn create_temp(parent: &Dir, name: &OsStr) -> io::Result<(OsString, File)> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    for _ in 0..TEMP_NAME_TRIES {
        let tmp_name = sibling_name(name, "tmp");
        match parent.open_with(&tmp_name, &opts) {
            Ok(file) => return Ok((tmp_name, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "could not find a free temp file name"))
}

/// Fill and fsync the temp file, carrying over the previous version's permission bits
/// (only rwx: a set-id bit copied onto a file the worker owns would hand out its uid).
fn fill(mut tmp: File, content: &[u8], previous: Option<&Metadata>) -> io::Result<()> {
    tmp.write_all(content)?;
    if let Some(prev) = previous {
        tmp.set_permissions(cap_std::fs::Permissions::from_mode(prev.permissions().mode() & 0o777))?;
    }
    tmp.sync_all()
}

/// Make `NAME.bak` the previous version, replacing an older one.
fn backup(parent: &Dir, name: &OsStr) -> io::Result<()> {
    let mut bak = name.to_os_string();
    bak.push(".bak");
    // Link under a temp name then rename, because link(2) will not replace an old .bak
    // and rename(2) does so atomically.
    let link = sibling_name(name, "bak");
    match parent.hard_link(name, parent, &link) {
        Ok(()) => parent.rename(&link, parent, &bak).inspect_err(|_| {
            let _ = parent.remove_file(&link);
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()), // gone meanwhile: nothing to keep
        // No hard links here (filesystem or protected_hardlinks): move the old version
        // aside instead; the target is then missing for a moment, but never torn.
        Err(_) => parent.rename(name, parent, &bak),
    }
}

/// `.NAME.<tag>-<16 hex>`, unpredictable so a task cannot pre-plant the names.
fn sibling_name(name: &OsStr, tag: &str) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS per thread; the counter and clock make each call
    // differ even so.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let stem = &name.as_bytes()[..name.len().min(TEMP_NAME_STEM_BYTES)];
    let mut out = b".".to_vec();
    out.extend_from_slice(stem);
    out.extend_from_slice(format!(".{tag}-{:016x}", h.finish()).as_bytes());
    OsString::from_vec(out)
}

/// fsync the directory so the renames survive a crash. The directory is reopened for
/// reading because cap-std may hold directories as `O_PATH`, which fsync refuses.
fn sync_dir(dir: &Dir) -> io::Result<()> {
    let mut opts = OpenOptions::new();
    opts.read(true).maybe_dir(true);
    dir.open_with(".", &opts)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::super::{FileOp, FilePolicy, perform};
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn write_op(dir: &std::path::Path, path: &str, content: &str) -> Result<String, FileError> {
        let policy = FilePolicy { roots: vec![], max_read_bytes: 1 << 20, max_write_bytes: 1 << 20 };
        let op = FileOp::Write { path: path.into(), content: content.as_bytes().to_vec() };
        perform(&policy, dir, &op).map(|o| String::from_utf8(o.stdout).unwrap())
    }

    #[test]
    fn creates_then_replaces_keeping_a_bak() {
        let tmp = tempfile::tempdir().unwrap();
        let out = write_op(tmp.path(), "sub/dir/a.txt", "one").unwrap();
        assert!(out.starts_with("wrote 3 bytes to sub/dir/a.txt sha256:7692c3ad"), "{out}");
        let file = tmp.path().join("sub/dir/a.txt");
        assert!(!tmp.path().join("sub/dir/a.txt.bak").exists());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4751)).unwrap();
        let out = write_op(tmp.path(), "sub/dir/a.txt", "two").unwrap();
        assert!(out.contains("previous version kept as sub/dir/a.txt.bak"), "{out}");
        write_op(tmp.path(), "sub/dir/a.txt", "three").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "three");
        assert_eq!(std::fs::read_to_string(tmp.path().join("sub/dir/a.txt.bak")).unwrap(), "two");
        // rwx carried over, set-id dropped.
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o751);
        let names: Vec<_> =
            std::fs::read_dir(tmp.path().join("sub/dir")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "no temp files left: {names:?}");
    }

    #[test]
    fn refuses_directories_and_symlinks_as_targets() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("real"), "keep").unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("link")).unwrap();
        for path in [".", "d/", "d/.", "d"] {
            assert!(matches!(write_op(tmp.path(), path, "x"), Err(FileError::Invalid(_))), "{path}");
        }
        assert!(matches!(write_op(tmp.path(), "link", "x"), Err(FileError::Denied(_))));
        assert_eq!(std::fs::read_to_string(tmp.path().join("real")).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(tmp.path().join("link")).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_failed_backup_leaves_the_target_and_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), "old").unwrap();
        std::fs::create_dir(tmp.path().join("a.bak")).unwrap();
        let e = write_op(tmp.path(), "a", "new").unwrap_err();
        assert!(matches!(&e, FileError::Io(m) if m.contains("as a.bak")), "{e}");
        assert_eq!(std::fs::read_to_string(tmp.path().join("a")).unwrap(), "old");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2, "only a and a.bak/");
    }

    #[test]
    fn a_name_ending_in_a_colon_is_a_file_name() {
        let tmp = tempfile::tempdir().unwrap();
        write_op(tmp.path(), "d/x:", "v").unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join("d/x:")).unwrap(), "v");
    }

    #[test]
    fn temp_names_are_hidden_bounded_and_distinct() {
        let long = OsString::from("n".repeat(255));
        let a = sibling_name(&long, "tmp");
        assert!(a.len() <= 255, "{}", a.len());
        let short = sibling_name(OsStr::new("a.txt"), "tmp");
        assert!(short.to_str().unwrap().starts_with(".a.txt.tmp-"), "{short:?}");
        assert_ne!(short, sibling_name(OsStr::new("a.txt"), "tmp"));
    }
}
