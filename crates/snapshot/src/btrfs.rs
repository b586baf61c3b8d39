//! The btrfs backend's primitives, through libbtrfsutil (the C library of btrfs-progs).
//!
//! Why the `libbtrfsutil` crate at 0.7: it wraps the library safely (the FFI `unsafe` stays
//! inside it, our crate denies `unsafe`), and it builds against Debian 12's libbtrfsutil 6.2.
//! Its 0.8 release calls `btrfs_util_subvolume_get_default`, a name that library (6.2) does
//! not have yet, so it fails to compile there; the older `btrfsutil` crate (0.2) works but is
//! unmaintained (uuid 0.8, bitflags 1). Both need libclang at build time for bindgen.
//!
//! Packages: build `libbtrfsutil-dev pkg-config libclang-dev`; run `libbtrfsutil1`.
//! Deleting a subvolume (prune, delete, restore) needs CAP_SYS_ADMIN (or the filesystem
//! mounted with `user_subvol_rm_allowed`), so the snapshot service runs as root.

use crate::error::{Result, SnapshotError};
use std::path::Path;

/// A read-only snapshot of the subvolume `src` at `dst` (which must not exist).
pub fn snapshot_read_only(src: &Path, dst: &Path) -> Result<()> {
    snapshot(src, dst, true)
}

/// A writable snapshot of `src` (itself possibly read-only) at `dst`: how restore gets a
/// state it can swap in without touching the snapshot it came from.
pub fn snapshot_writable(src: &Path, dst: &Path) -> Result<()> {
    snapshot(src, dst, false)
}

fn snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    libbtrfsutil::CreateSnapshotOptions::new().readonly(read_only).create(src, dst).map_err(|e| {
        if e.errno() == nix::libc::EXDEV {
            return SnapshotError::CrossDevice {
                state_dir: src.display().to_string(),
                snapshot_dir: dst.parent().unwrap_or(dst).display().to_string(),
                backend: "btrfs",
                why: "they are on different btrfs filesystems".into(),
            };
        }
        SnapshotError::btrfs(format_args!("cannot snapshot {} to {}", src.display(), dst.display()), e)
    })
    // No extra sync: the kernel creates a snapshot by committing a transaction before the
    // ioctl returns, so it is on disk before the metadata that names it is written.
}

/// Whether `path` is a btrfs subvolume (false when it is not on btrfs at all).
pub fn is_subvolume(path: &Path) -> Result<bool> {
    libbtrfsutil::is_subvolume(path)
        .map_err(|e| SnapshotError::btrfs(format_args!("cannot tell whether {} is a subvolume", path.display()), e))
}

/// Delete the subvolume at `path` (read-only or not).
pub fn delete(path: &Path) -> Result<()> {
    libbtrfsutil::delete_subvolume(path).map_err(|e| {
        let hint = if e.errno() == nix::libc::EPERM {
            " (deleting a subvolume needs root or the mount option user_subvol_rm_allowed)"
        } else {
            ""
        };
        SnapshotError::btrfs(format_args!("cannot delete subvolume {}{hint}", path.display()), e)
    })
}

/// Remove whatever is at `path`: a subvolume by subvolume delete, anything else recursively.
pub fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io_at("cannot stat", path, e)),
        Ok(m) if m.is_dir() && is_subvolume(path)? => delete(path),
        Ok(m) if m.is_dir() => crate::fsutil::remove_tree(path),
        Ok(_) => std::fs::remove_file(path).map_err(|e| SnapshotError::io_at("cannot remove", path, e)),
    }
}
