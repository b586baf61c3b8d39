//! The snapshot directory's lock: one mutating operation at a time, across processes.
//!
//! `flock` on `<snapshot_dir>/.lock` (through `File::try_lock`). The kernel drops it when
//! the holder exits, however it exits, so a crashed run never leaves a stale lock behind.
//! Nobody waits for it: a second run is told another one holds it.

use crate::error::{Result, SnapshotError};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Name of the lock file in the snapshot directory.
pub const LOCK_FILE: &str = ".lock";

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// Take the lock of `snapshot_dir` without waiting: `Ok(None)` when another holds it.
pub fn try_lock(snapshot_dir: &Path) -> Result<Option<LockGuard>> {
    let path = lock_path(snapshot_dir);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SnapshotError::io_at("cannot open the lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard { _file: file })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(SnapshotError::io_at("cannot lock", &path, e)),
    }
}

/// Take the lock or fail with [`SnapshotError::Locked`].
pub fn lock_or_fail(snapshot_dir: &Path) -> Result<LockGuard> {
    try_lock(snapshot_dir)?.ok_or_else(|| SnapshotError::Locked(lock_path(snapshot_dir).display().to_string()))
}

/// Path of the lock file.
pub fn lock_path(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.join(LOCK_FILE)
}
