//! Restore: swap the state directory for a snapshot's (see [`Snapshots::restore`]), keeping
//! the replaced state as a `pre-restore` snapshot.

use crate::backend::Backend;
use crate::error::{Result, SnapshotError};
use crate::meta::{Kind, SnapshotMeta};
use crate::{Snapshots, btrfs, copy, fsutil, lock, sqlite};
use jiff::Timestamp;
use machina_core::log::MSG_SNAPSHOT_RESTORED;
use machina_ledger::{LEDGER_FILE, SCHEMA_VERSION};
use nix::errno::Errno;
use nix::fcntl::{RenameFlags, renameat2};
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};

/// How the state directory was swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exchange {
    /// One `renameat2(RENAME_EXCHANGE)`: no moment without a complete state directory.
    Atomic,
    /// Two renames, because the filesystem cannot exchange: a short window without one.
    TwoRenames,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot now in place.
    pub restored: SnapshotMeta,
    /// The state it replaced, kept as a snapshot (`None` when the state held no ledger).
    pub pre_restore: Option<SnapshotMeta>,
    /// How the directories were swapped.
    pub exchange: Exchange,
}

impl Snapshots {
    /// Replace the state directory's contents with snapshot `id`'s; `now` dates the
    /// pre-restore snapshot. Stop every machina service first and start them afterwards:
    /// this assumes nothing writes to the state meanwhile.
    ///
    /// Steps, all under the snapshot lock:
    /// 1. Build the restored tree beside the state directory, at `<parent>/.<name>.restore-<id>`:
    ///    btrfs, a writable snapshot of the read-only snapshot (instant; the snapshot stays
    ///    untouched); copy, online backup of the snapshot's ledger plus hard links of its artifacts.
    /// 2. Verify it: the ledger opens, passes `PRAGMA quick_check`, and its schema is not newer
    ///    than this build's. Nothing has changed if this fails.
    /// 3. Snapshot the current state as `pre-restore`, labelled with the time (skipped when the
    ///    state holds no ledger, as after losing it), so the restore itself can be undone by
    ///    restoring that snapshot. If a later step fails, this snapshot stays (harmless).
    /// 4. Exchange the two directories with `renameat2(RENAME_EXCHANGE)`: atomic, the state path
    ///    always names a complete tree. Where the filesystem cannot (EINVAL, e.g. overlayfs), two
    ///    renames: state → `.<name>.replaced-<id>`, then restored → state (moved back if the
    ///    second fails); a crash between them leaves no state directory, and the pre-restore
    ///    snapshot holds it. [`RestoreReport::exchange`] says which was used.
    /// 5. Remove the replaced tree (it is in the pre-restore snapshot); a failure here is only
    ///    logged, and the next restore removes it.
    ///
    /// The state directory must not be a mount point (a rename cannot move one). A snapshot
    /// made by the other backend is refused (`BackendMismatch`).
    pub fn restore(&self, id: &str, now: Timestamp) -> Result<RestoreReport> {
        let _lock = lock::lock_or_fail(&self.config().snapshot_dir)?;
        self.logged(self.restore_locked(id, now))
    }

    fn restore_locked(&self, id: &str, now: Timestamp) -> Result<RestoreReport> {
        let snap = self.get(id)?;
        if snap.backend != self.backend() {
            return Err(SnapshotError::BackendMismatch {
                id: snap.id,
                made_by: snap.backend.as_str(),
                current: self.backend().as_str(),
                path: snap.path.display().to_string(),
            });
        }
        if !snap.path.is_dir() {
            return Err(SnapshotError::Integrity(format!(
                "the files of snapshot {id} ({}) are missing",
                snap.path.display()
            )));
        }
        let state = self.config().state_dir.clone();
        let (parent, name) = split(&state)?;
        self.check_swappable(&state, &parent)?;
        let staging_name = format!(".{}.restore-{id}", name.to_string_lossy());
        let replaced_name = format!(".{}.replaced-{id}", name.to_string_lossy());
        self.remove_stale(&parent, &name)?;
        let staging = parent.join(&staging_name);

        let prepared = self.build_and_verify(&snap, &staging).and_then(|()| self.pre_restore_snapshot(&snap, now));
        let pre_restore = prepared.inspect_err(|_| {
            let _ = self.remove_tree(&staging);
        })?;

        let (exchange, old) = exchange(&parent, &name, OsStr::new(&staging_name), OsStr::new(&replaced_name), false)
            .inspect_err(|_| {
                let _ = self.remove_tree(&staging);
            })?;
        fsutil::fsync_dir(&parent)?;
        if let Err(e) = self.remove_tree(&old) {
            // The restore is done; the replaced tree is in the pre-restore snapshot anyway.
            tracing::warn!(path = %old.display(), error = %e, "cannot remove the replaced state; the next restore retries");
        }
        tracing::info!(message_id = MSG_SNAPSHOT_RESTORED, snapshot = %snap.id, backend = %self.backend(),
            pre_restore = pre_restore.as_ref().map(|m| m.id.as_str()).unwrap_or("none"), exchange = ?exchange,
            "state restored from snapshot {}", snap.id);
        Ok(RestoreReport { restored: snap, pre_restore, exchange })
    }

    /// Step 1 and 2: the restored tree at `staging`, checked.
    fn build_and_verify(&self, snap: &SnapshotMeta, staging: &Path) -> Result<()> {
        match self.backend() {
            Backend::Btrfs => btrfs::snapshot_writable(&snap.path, staging)?,
            Backend::Copy => {
                copy::copy_state(&snap.path, staging)?;
            }
        }
        let found = sqlite::verify(&staging.join(LEDGER_FILE)).map_err(|e| {
            SnapshotError::Integrity(format!("the ledger of snapshot {} does not open cleanly: {e}", snap.id))
        })?;
        if found > SCHEMA_VERSION {
            return Err(SnapshotError::SchemaTooNew { id: snap.id.clone(), found, supported: SCHEMA_VERSION });
        }
        Ok(())
    }

    /// Step 3: keep the current state as a snapshot, labelled with the time.
    fn pre_restore_snapshot(&self, snap: &SnapshotMeta, now: Timestamp) -> Result<Option<SnapshotMeta>> {
        if !self.ledger_path().exists() {
            tracing::warn!(state_dir = %self.config().state_dir.display(),
                "the state holds no ledger: nothing to keep before restoring");
            return Ok(None);
        }
        let local = now.to_zoned_datetime(self.config().time_zone.clone()).strftime("%Y-%m-%d %H:%M:%S %Z");
        let label = format!("state before restoring {} at {local}", snap.id);
        self.create_locked(Kind::PreRestore, Some(label), now).map(Some)
    }

    /// A rename can only swap the state directory if it is not a mount point and, for the
    /// copy backend, shares its parent's filesystem (btrfs subvolumes have their own device
    /// numbers, so there only the mount point check applies).
    fn check_swappable(&self, state: &Path, parent: &Path) -> Result<()> {
        let swappable = !is_mount_point(state)
            && (self.backend() == Backend::Btrfs || fsutil::device_of(state)? == fsutil::device_of(parent)?);
        if !swappable {
            return Err(SnapshotError::InvalidConfig(format!(
                "the state directory {} is a mount point, and restore swaps it for the restored tree by rename: \
                 mount its filesystem one level up (or restore by hand)",
                state.display()
            )));
        }
        Ok(())
    }

    /// Remove trees an interrupted restore left beside the state directory. Safe: they are
    /// half-built restores or states already kept as pre-restore snapshots.
    fn remove_stale(&self, parent: &Path, name: &OsStr) -> Result<()> {
        let prefixes =
            [format!(".{}.restore-", name.to_string_lossy()), format!(".{}.replaced-", name.to_string_lossy())];
        let entries = std::fs::read_dir(parent).map_err(|e| SnapshotError::io_at("cannot list", parent, e))?;
        for entry in entries.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
                tracing::warn!(path = %entry.path().display(), "removing what an interrupted restore left behind");
                self.remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn split(state: &Path) -> Result<(PathBuf, std::ffi::OsString)> {
    let abs = state.canonicalize().map_err(|e| SnapshotError::io_at("cannot resolve", state, e))?;
    match (abs.parent(), abs.file_name()) {
        (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_owned())),
        _ => Err(SnapshotError::InvalidConfig(format!("cannot restore into {}: it has no parent", abs.display()))),
    }
}

/// Swap `parent/name` with `parent/staging`; returns how, and where the old tree now is.
fn exchange(
    parent: &Path,
    name: &OsStr,
    staging: &OsStr,
    replaced: &OsStr,
    force_two_renames: bool,
) -> Result<(Exchange, PathBuf)> {
    let dir = File::open(parent).map_err(|e| SnapshotError::io_at("cannot open", parent, e))?;
    let fail = |what: &str, e: Errno| {
        let hint = if e == Errno::EBUSY { " (is it a mount point?)" } else { "" };
        SnapshotError::io(format_args!("{what} in {}{hint}", parent.display()), std::io::Error::from(e))
    };
    if !force_two_renames {
        match renameat2(&dir, name, &dir, staging, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok((Exchange::Atomic, parent.join(staging))),
            Err(e @ (Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP)) => {
                tracing::warn!(error = %e, "the filesystem cannot exchange directories atomically; using two renames");
            }
            Err(e) => return Err(fail("cannot exchange the state directory with the restored one", e)),
        }
    }
    let plain = RenameFlags::empty();
    renameat2(&dir, name, &dir, replaced, plain).map_err(|e| fail("cannot move the state directory aside", e))?;
    if let Err(e) = renameat2(&dir, staging, &dir, name, plain) {
        let _ = renameat2(&dir, replaced, &dir, name, plain);
        return Err(fail("cannot move the restored state into place", e));
    }
    Ok((Exchange::TwoRenames, parent.join(replaced)))
}

/// Whether `path` is a mount point, from /proc/self/mountinfo (false if that cannot be read:
/// the rename then fails with EBUSY, reported as such).
fn is_mount_point(path: &Path) -> bool {
    let Ok(abs) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mp| Path::new(&unescape_mount_path(mp)) == abs)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(b.len()), 0);
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|o| b[i] == b'\\' && o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(o) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path, file: &str) {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join(file), file).unwrap();
    }

    #[test]
    fn exchange_swaps_atomically_or_with_two_renames() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        tree(&p.join("state"), "old");
        tree(&p.join("new"), "new");
        let os = OsStr::new;
        let (how, old) = exchange(p, os("state"), os("new"), os("replaced"), false).unwrap();
        assert_eq!(how, Exchange::Atomic);
        assert!(p.join("state/new").exists() && old.join("old").exists());

        // The fallback: same outcome, the old tree under the replaced name.
        let (how, old) = exchange(p, os("state"), os("new"), os("replaced"), true).unwrap();
        assert_eq!(how, Exchange::TwoRenames);
        assert_eq!(old, p.join("replaced"));
        assert!(p.join("state/old").exists() && p.join("replaced/new").exists() && !p.join("new").exists());
    }

    #[test]
    fn mount_points_are_recognised() {
        assert!(is_mount_point(Path::new("/proc")));
        let tmp = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(tmp.path()));
        assert_eq!(unescape_mount_path(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
    }
}
