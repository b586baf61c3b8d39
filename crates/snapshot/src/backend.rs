//! Which backend a state directory gets: decided by explicit rules (see [`Backend::detect`])
//! and reported, never switched silently.

use crate::config::BackendChoice;
use crate::error::{Result, SnapshotError};
use crate::fsutil;
use nix::sys::statfs::{
    BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, statfs,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// How snapshots are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Read-only btrfs snapshots of the state subvolume (instant, copy-on-write).
    Btrfs,
    /// SQLite online backup of the ledger plus hard links of the immutable artifacts.
    Copy,
}

impl Backend {
    /// The stable name: `btrfs` or `copy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Btrfs => "btrfs",
            Self::Copy => "copy",
        }
    }

    /// The backend for `state_dir` with snapshots in `snapshot_dir` (which must exist).
    ///
    /// | state directory                    | `auto`               | `btrfs`           | `copy` |
    /// |------------------------------------|----------------------|-------------------|--------|
    /// | a btrfs subvolume                  | btrfs                | btrfs             | copy   |
    /// | a plain directory on btrfs         | error `NotSubvolume` | error `NotBtrfs`  | copy   |
    /// | on any other filesystem            | copy                 | error `NotBtrfs`  | copy   |
    ///
    /// Then the snapshot directory must suit the backend, or this fails with `CrossDevice`:
    /// btrfs needs it on btrfs, on the same filesystem (a snapshot across btrfs filesystems
    /// fails with EXDEV, reported as `CrossDevice` when the first snapshot is made); copy needs
    /// it on the same device number as the state directory, because artifacts are hard-linked
    /// and a hard link crosses neither a filesystem nor a btrfs subvolume boundary. Copying the
    /// artifacts byte by byte instead would quietly turn a sub-second snapshot into a full
    /// copy, so that never happens.
    pub fn detect(state_dir: &Path, snapshot_dir: &Path, choice: BackendChoice) -> Result<Self> {
        let fs_type = fs_type_name(state_dir)?;
        let on_btrfs = fs_type == "btrfs";
        let subvolume = on_btrfs && crate::btrfs::is_subvolume(state_dir)?;
        let state = state_dir.display().to_string();
        let backend = match (choice, subvolume, on_btrfs) {
            (BackendChoice::Copy, ..) => Self::Copy,
            (_, true, _) => Self::Btrfs,
            (BackendChoice::Auto, false, true) => return Err(SnapshotError::NotSubvolume { state_dir: state }),
            (BackendChoice::Auto, false, false) => Self::Copy,
            (BackendChoice::Btrfs, false, on_btrfs) => {
                let why = if on_btrfs { "a plain directory on btrfs".into() } else { format!("it is on {fs_type}") };
                return Err(SnapshotError::NotBtrfs { state_dir: state, why });
            }
        };
        backend.check_snapshot_dir(state_dir, snapshot_dir)?;
        Ok(backend)
    }

    fn check_snapshot_dir(self, state_dir: &Path, snapshot_dir: &Path) -> Result<()> {
        let cross = |why: String| SnapshotError::CrossDevice {
            state_dir: state_dir.display().to_string(),
            snapshot_dir: snapshot_dir.display().to_string(),
            backend: self.as_str(),
            why,
        };
        match self {
            Self::Btrfs => {
                let t = fs_type_name(snapshot_dir)?;
                if t != "btrfs" {
                    return Err(cross(format!("the snapshot directory is on {t}")));
                }
            }
            Self::Copy => {
                if fsutil::device_of(state_dir)? != fsutil::device_of(snapshot_dir)? {
                    return Err(cross(
                        "they have different device numbers: another filesystem or btrfs subvolume".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The filesystem type of `path` (`btrfs`, `ext4`, `tmpfs`…).
pub fn fs_type_name(path: &Path) -> Result<String> {
    let st = statfs(path)
        .map_err(|e| SnapshotError::io_at("cannot statfs", path, std::io::Error::from_raw_os_error(e as i32)))?;
    // Names for the messages; any other filesystem is shown by its magic number.
    let known = [
        (BTRFS_SUPER_MAGIC, "btrfs"),
        (EXT4_SUPER_MAGIC, "ext4"),
        (XFS_SUPER_MAGIC, "xfs"),
        (TMPFS_MAGIC, "tmpfs"),
        (OVERLAYFS_SUPER_MAGIC, "overlayfs"),
    ];
    let t = st.filesystem_type();
    Ok(known.iter().find(|(m, _)| *m == t).map(|(_, n)| n.to_string()).unwrap_or_else(|| format!("{t:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_not_on_btrfs_gets_copy_and_forced_btrfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (state, snaps) = (dir.path().join("state"), dir.path().join("snaps"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&snaps).unwrap();
        if fs_type_name(&state).unwrap() == "btrfs" {
            eprintln!("skipping: the temp dir is on btrfs (the btrfs integration test covers it)");
            return;
        }
        assert_eq!(Backend::detect(&state, &snaps, BackendChoice::Auto).unwrap(), Backend::Copy);
        assert_eq!(Backend::detect(&state, &snaps, BackendChoice::Copy).unwrap(), Backend::Copy);
        let e = Backend::detect(&state, &snaps, BackendChoice::Btrfs).unwrap_err();
        assert!(matches!(e, SnapshotError::NotBtrfs { .. }), "{e}");
        assert_eq!(e.kind().as_str(), "invalid_input");
    }
}
