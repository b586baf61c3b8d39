//! The copy backend: a consistent copy of the state on any filesystem.
//!
//! The ledger is copied with SQLite's online backup (one read transaction, so one committed
//! state, while the services keep writing). Artifacts are content-addressed and never
//! modified after their atomic rename, so a hard link is as good as a copy and costs one
//! directory entry: the time goes into the ledger backup. Artifacts written after the backup
//! started may be linked too; they are unreferenced by the copied ledger, and harmless (the
//! ledger's artifact pruning removes unreferenced files after a grace period).
//!
//! Only the ledger and `artifacts/` make up a copy snapshot; other entries of the state
//! directory (the workers' per-attempt `tasks/` scratch directories) are not machina's
//! record and are left out. Owners and modes are mirrored, so a tree built by root is still
//! the services' own.

use crate::error::{Result, SnapshotError};
use crate::fsutil::{self, mirror_owner_mode};
use crate::sqlite;
use machina_ledger::{ARTIFACTS_DIR, LEDGER_FILE};
use std::fs;
use std::path::Path;

/// Name of the artifact store's directory of files being written (never linked).
const ARTIFACT_TMP_DIR: &str = "tmp";

/// Build a copy of the state tree `src` at `dst` (which must not exist): the ledger by online
/// backup, artifacts by hard link. Returns the number of artifact files linked.
///
/// Used both to make a snapshot (`src` = the live state) and to restore one (`src` = the
/// snapshot). Leaves `dst` half-built on error; the caller removes it.
pub fn copy_state(src: &Path, dst: &Path) -> Result<u64> {
    let src_meta = fs::metadata(src).map_err(|e| SnapshotError::io_at("cannot stat", src, e))?;
    fs::create_dir(dst).map_err(|e| SnapshotError::io_at("cannot create", dst, e))?;
    mirror_owner_mode(&src_meta, dst)?;

    let (src_ledger, dst_ledger) = (src.join(LEDGER_FILE), dst.join(LEDGER_FILE));
    sqlite::backup(&src_ledger, &dst_ledger)?;
    let ledger_meta = fs::metadata(&src_ledger).map_err(|e| SnapshotError::io_at("cannot stat", &src_ledger, e))?;
    mirror_owner_mode(&ledger_meta, &dst_ledger)?;

    let src_artifacts = src.join(ARTIFACTS_DIR);
    let linked = if src_artifacts.is_dir() { link_tree(&src_artifacts, &dst.join(ARTIFACTS_DIR), true)? } else { 0 };
    fsutil::fsync_dir(dst)?;
    Ok(linked)
}

/// Recreate the directories of `src` at `dst` and hard-link its regular files; `top` marks the
/// artifact store's root, whose `tmp/` is recreated empty (files there are still being written).
fn link_tree(src: &Path, dst: &Path, top: bool) -> Result<u64> {
    let src_meta = fs::metadata(src).map_err(|e| SnapshotError::io_at("cannot stat", src, e))?;
    fs::create_dir(dst).map_err(|e| SnapshotError::io_at("cannot create", dst, e))?;
    mirror_owner_mode(&src_meta, dst)?;
    let mut linked = 0;
    let entries = fs::read_dir(src).map_err(|e| SnapshotError::io_at("cannot list", src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io_at("cannot list", src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let file_type = entry.file_type().map_err(|e| SnapshotError::io_at("cannot stat", &from, e))?;
        if file_type.is_dir() {
            if top && entry.file_name() == ARTIFACT_TMP_DIR {
                let tmp_meta = entry.metadata().map_err(|e| SnapshotError::io_at("cannot stat", &from, e))?;
                fs::create_dir(&to).map_err(|e| SnapshotError::io_at("cannot create", &to, e))?;
                mirror_owner_mode(&tmp_meta, &to)?;
            } else {
                linked += link_tree(&from, &to, false)?;
            }
        } else if file_type.is_file() {
            link(&from, &to)?;
            linked += 1;
        } else {
            // The store only ever holds directories and regular files.
            tracing::warn!(path = %from.display(), "not a regular file or directory; left out of the snapshot");
        }
    }
    // The links are directory entries: make them durable before the snapshot is declared.
    fsutil::fsync_dir(dst)?;
    Ok(linked)
}

fn link(from: &Path, to: &Path) -> Result<()> {
    fs::hard_link(from, to).map_err(|e| {
        if e.raw_os_error() == Some(nix::libc::EXDEV) {
            return SnapshotError::CrossDevice {
                state_dir: from.display().to_string(),
                snapshot_dir: to.display().to_string(),
                backend: "copy",
                why: "a hard link cannot cross filesystems or btrfs subvolumes".into(),
            };
        }
        SnapshotError::io(format_args!("cannot hard-link {} to {}", from.display(), to.display()), e)
    })
}

/// Bytes of the files in a snapshot tree, and the number of artifacts in it.
pub fn sizes(root: &Path) -> Result<(u64, u64)> {
    let (bytes, _) = fsutil::tree_size(root)?;
    let artifacts = root.join(ARTIFACTS_DIR);
    let (_, all) = fsutil::tree_size(&artifacts)?;
    let (_, in_tmp) = fsutil::tree_size(&artifacts.join(ARTIFACT_TMP_DIR))?;
    Ok((bytes, all - in_tmp))
}
