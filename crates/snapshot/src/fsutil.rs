//! Small filesystem helpers: durable atomic writes, directory fsync, sizes, ownership.

use crate::error::{Result, SnapshotError};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// fsync a directory, so the names created or renamed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SnapshotError::io_at("cannot fsync directory", dir, e))
}

/// Replace `dir/name` with `bytes` atomically: temp file, fsync, rename, directory fsync.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SnapshotError::io_at("cannot write", &dest, e)
    })?;
    fsync_dir(dir)
}

/// Give `dst` the owner, group and mode of `src_meta` (what the state's files had), so a
/// tree built by root is still usable by the services' own user. Ownership is only changed
/// when it differs, so an unprivileged caller works on its own files.
pub fn mirror_owner_mode(src_meta: &fs::Metadata, dst: &Path) -> Result<()> {
    let dst_meta = fs::symlink_metadata(dst).map_err(|e| SnapshotError::io_at("cannot stat", dst, e))?;
    if (dst_meta.uid(), dst_meta.gid()) != (src_meta.uid(), src_meta.gid()) {
        std::os::unix::fs::chown(dst, Some(src_meta.uid()), Some(src_meta.gid()))
            .map_err(|e| SnapshotError::io_at("cannot change the owner of", dst, e))?;
    }
    let mode = src_meta.permissions().mode() & 0o7777;
    if dst_meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(dst, fs::Permissions::from_mode(mode))
            .map_err(|e| SnapshotError::io_at("cannot set the mode of", dst, e))?;
    }
    Ok(())
}

/// Bytes and count of the regular files under `root` (not following symlinks).
pub fn tree_size(root: &Path) -> Result<(u64, u64)> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SnapshotError::io_at("cannot list", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io_at("cannot list", &dir, e))?;
            let meta = entry.metadata().map_err(|e| SnapshotError::io_at("cannot stat", &entry.path(), e))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    Ok((bytes, files))
}

/// The device number of `path` (one per filesystem, and one per btrfs subvolume).
pub fn device_of(path: &Path) -> Result<u64> {
    fs::metadata(path).map(|m| m.dev()).map_err(|e| SnapshotError::io_at("cannot stat", path, e))
}

/// Remove a directory tree if it exists.
pub fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io_at("cannot remove", path, e)),
    }
}
