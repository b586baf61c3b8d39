//! Snapshot metadata: what a snapshot is, its id, and the JSON file beside it (the
//! directory layout is in the crate documentation).

use crate::backend::Backend;
use crate::error::{Result, SnapshotError};
use crate::fsutil;
use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Suffix of metadata files.
pub const META_SUFFIX: &str = ".json";
/// Prefix of trees being built in the snapshot directory.
pub const PARTIAL_PREFIX: &str = ".partial-";
/// Longest label accepted, in characters.
pub const LABEL_MAX_CHARS: usize = 200;

/// Why a snapshot was made; decides which retention count it falls under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Made by the timer; at most one per cadence period; `keep_scheduled` of them kept.
    Scheduled,
    /// Asked for by an operator (optionally labelled); counted with pre-restore ones.
    Manual,
    /// The state a restore replaced, kept so a restore can itself be undone.
    PreRestore,
}

impl Kind {
    /// The stable name (`scheduled`, `manual`, `pre-restore`), also used in ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Manual => "manual",
            Self::PreRestore => "pre-restore",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One snapshot, as stored in `<id>.json` (and returned by list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Unique, sortable, path-safe: `20261123T031500Z-scheduled` (UTC), `-2`… on a clash.
    pub id: String,
    /// Why it was made.
    pub kind: Kind,
    /// The operator's label (manual), or the restore that made it (pre-restore).
    pub label: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// The local calendar day it was made on, in the configured time zone (`YYYY-MM-DD`).
    pub local_day: Date,
    /// Pinned snapshots are never deleted by retention (nor by delete until unpinned).
    pub pinned: bool,
    /// Which backend made it.
    pub backend: Backend,
    /// Where its files are (`<snapshot_dir>/<id>`); set from the directory when read.
    pub path: PathBuf,
    /// Bytes of the files in it (the ledger plus artifacts; btrfs shares unchanged extents,
    /// the copy backend shares artifacts by hard link, so this is not the disk space it costs).
    pub size_bytes: u64,
    /// Artifact files in it.
    pub artifacts: u64,
    /// The ledger's schema version (`PRAGMA user_version`) at the time.
    pub schema_version: i64,
    /// The machina version that made it.
    pub machina_version: String,
}

/// Whether `id` could be a snapshot id: keeps ids from naming anything outside the snapshot directory.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && id.as_bytes()[0].is_ascii_digit()
}

/// Whether `name` has exactly the shape [`new_id`] gives: `YYYYMMDDTHHMMSSZ-<kind>[-N]`.
/// Only such names are ever treated as ours when cleaning up.
pub fn is_generated_id(name: &str) -> bool {
    const KINDS: [&str; 3] = ["scheduled", "manual", "pre-restore"];
    let b = name.as_bytes();
    let stamp = b.len() > 17
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-";
    if !stamp {
        return false;
    }
    let rest = &name[17..];
    // An optional `-N` disambiguates ids made in the same second.
    let kind = match rest.rsplit_once('-') {
        Some((kind, n)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => kind,
        _ => rest,
    };
    KINDS.contains(&kind)
}

/// The id for a snapshot of `kind` made at `at`, unique among `taken`.
pub fn new_id(kind: Kind, at: Timestamp, taken: impl Fn(&str) -> bool) -> String {
    let base = format!("{}-{}", at.strftime("%Y%m%dT%H%M%SZ"), kind.as_str());
    if !taken(&base) {
        return base;
    }
    (2..).map(|n| format!("{base}-{n}")).find(|id| !taken(id)).expect("an unused suffix exists")
}

/// A label as stored: trimmed, `None` when empty; control characters and overlong labels are refused.
pub fn clean_label(label: Option<&str>) -> Result<Option<String>> {
    let Some(label) = label.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if label.chars().count() > LABEL_MAX_CHARS || label.chars().any(char::is_control) {
        return Err(SnapshotError::InvalidInput(format!(
            "a snapshot label must be at most {LABEL_MAX_CHARS} characters without control characters"
        )));
    }
    Ok(Some(label.to_string()))
}

/// Path of the metadata file of `id`.
pub fn meta_path(snapshot_dir: &Path, id: &str) -> PathBuf {
    snapshot_dir.join(format!("{id}{META_SUFFIX}"))
}

/// Write `meta` atomically (temp file, fsync, rename, directory fsync).
pub fn write(snapshot_dir: &Path, meta: &SnapshotMeta) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(meta).expect("metadata serializes");
    bytes.push(b'\n');
    fsutil::write_atomic(snapshot_dir, &format!("{}{META_SUFFIX}", meta.id), &bytes)
}

/// Read the metadata of `id` (`NotFound` if there is none).
pub fn read(snapshot_dir: &Path, id: &str) -> Result<SnapshotMeta> {
    if !is_valid_id(id) {
        return Err(SnapshotError::NotFound(id.to_string()));
    }
    let path = meta_path(snapshot_dir, id);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::NotFound(id.to_string())),
        Err(e) => return Err(SnapshotError::io_at("cannot read", &path, e)),
    };
    let mut meta: SnapshotMeta = serde_json::from_slice(&bytes)
        .map_err(|e| SnapshotError::Integrity(format!("snapshot metadata {} is not valid: {e}", path.display())))?;
    if meta.id != id {
        return Err(SnapshotError::Integrity(format!("{} names snapshot {}", path.display(), meta.id)));
    }
    meta.path = snapshot_dir.join(id);
    Ok(meta)
}

/// Every snapshot in `snapshot_dir`, oldest first. A metadata file that cannot be read is
/// logged and left out, so one damaged file does not hide the others.
pub fn list(snapshot_dir: &Path) -> Result<Vec<SnapshotMeta>> {
    let entries = std::fs::read_dir(snapshot_dir).map_err(|e| SnapshotError::io_at("cannot list", snapshot_dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SnapshotError::io_at("cannot list", snapshot_dir, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(META_SUFFIX)) else { continue };
        if !is_valid_id(id) {
            continue;
        }
        match read(snapshot_dir, id) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!(snapshot = id, error = %e, "skipping a snapshot whose metadata cannot be read"),
        }
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sortable_unique_and_path_safe() {
        let at: Timestamp = "2026-11-23T03:15:00.5Z".parse().unwrap();
        let id = new_id(Kind::PreRestore, at, |_| false);
        assert_eq!(id, "20261123T031500Z-pre-restore");
        assert!(is_valid_id(&id));
        let taken = [id.clone(), format!("{id}-2")];
        assert_eq!(new_id(Kind::PreRestore, at, |s| taken.iter().any(|t| t == s)), format!("{id}-3"));
        for bad in ["", "../x", ".lock", "-x", "a/b", "x.json", "abc"] {
            assert!(!is_valid_id(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn metadata_json_is_stable_and_round_trips() {
        let at: Timestamp = "2026-11-23T03:15:00Z".parse().unwrap();
        let m = SnapshotMeta {
            id: "20261123T031500Z-pre-restore".into(),
            kind: Kind::PreRestore,
            label: Some("state before restoring x".into()),
            created_at: at,
            local_day: "2026-11-23".parse().unwrap(),
            pinned: true,
            backend: Backend::Btrfs,
            path: "/var/lib/machina-snapshots/20261123T031500Z-pre-restore".into(),
            size_bytes: 42,
            artifacts: 3,
            schema_version: 3,
            machina_version: "0.1.0".into(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["kind"], "pre-restore");
        assert_eq!(v["backend"], "btrfs");
        assert_eq!(v["created_at"], "2026-11-23T03:15:00Z");
        assert_eq!(v["local_day"], "2026-11-23");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &m).unwrap();
        let back = read(dir.path(), &m.id).unwrap();
        assert_eq!(back, SnapshotMeta { path: dir.path().join(&m.id), ..m });
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        );
    }

    #[test]
    fn labels_are_trimmed_and_checked() {
        assert_eq!(clean_label(Some("  before upgrade ")).unwrap().as_deref(), Some("before upgrade"));
        assert_eq!(clean_label(Some("   ")).unwrap(), None);
        assert_eq!(clean_label(None).unwrap(), None);
        assert!(clean_label(Some("a\nb")).is_err());
        assert!(clean_label(Some(&"x".repeat(LABEL_MAX_CHARS + 1))).is_err());
    }
}

#[cfg(test)]
mod generated_id_tests {
    use super::is_generated_id;

    #[test]
    fn only_our_own_names_count_as_ours() {
        for ours in ["20261123T031500Z-scheduled", "20261123T031500Z-manual-2", "20261123T031500Z-pre-restore"] {
            assert!(is_generated_id(ours), "{ours}");
        }
        for theirs in ["2024-dump", "20261123T031500Z-backup", "20261123-scheduled", "2026112T031500Z-manual", "1"] {
            assert!(!is_generated_id(theirs), "{theirs}");
        }
    }
}
