//! What the caller configures: where state and snapshots live, which backend, how many to keep.

use crate::error::{Result, SnapshotError};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// btrfs when the state directory is a btrfs subvolume, copy when it is not on btrfs at all,
    /// and an error (never a silent switch) when it is on btrfs but not a subvolume.
    #[default]
    Auto,
    /// btrfs only: an error unless the state directory is a btrfs subvolume.
    Btrfs,
    /// The copy backend on any filesystem (including a plain directory on btrfs).
    Copy,
}

/// How often scheduled snapshots are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cadence {
    /// At most one scheduled snapshot per local calendar day.
    #[default]
    Daily,
    /// At most one scheduled snapshot per local ISO week (Monday to Sunday).
    Weekly,
}

/// How many snapshots retention keeps, and how often scheduled ones are due.
///
/// Scheduled snapshots and manual ones (manual and pre-restore) are counted separately;
/// pinned snapshots are counted in neither and never pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// When a scheduled snapshot is due.
    pub cadence: Cadence,
    /// Unpinned scheduled snapshots to keep (newest first).
    pub keep_scheduled: usize,
    /// Unpinned manual and pre-restore snapshots to keep (newest first).
    pub keep_manual: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self { cadence: Cadence::Daily, keep_scheduled: 5, keep_manual: 10 }
    }
}

impl RetentionPolicy {
    /// Check the counts: keeping none would delete a snapshot the moment it is made.
    pub fn validate(&self) -> Result<()> {
        if self.keep_scheduled == 0 || self.keep_manual == 0 {
            return Err(SnapshotError::InvalidConfig(format!(
                "keep_scheduled ({}) and keep_manual ({}) must be at least 1 (a snapshot would be deleted as soon \
                 as it was made); to stop scheduled snapshots, disable the timer instead",
                self.keep_scheduled, self.keep_manual
            )));
        }
        Ok(())
    }
}

/// Everything [`Snapshots::open`](crate::Snapshots::open) needs.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// machina's state directory (holds `ledger.db` and `artifacts/`).
    pub state_dir: PathBuf,
    /// Where snapshots and their metadata go: beside the state directory, never inside it.
    pub snapshot_dir: PathBuf,
    /// Which backend to use.
    pub backend: BackendChoice,
    /// Retention.
    pub policy: RetentionPolicy,
    /// The time zone whose calendar days (or weeks) the cadence counts.
    pub time_zone: TimeZone,
}

impl SnapshotConfig {
    /// Defaults for `state_dir`: snapshots in [`default_snapshot_dir`], backend auto, keep 5
    /// scheduled and 10 manual, daily, the system's time zone.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            snapshot_dir: default_snapshot_dir(&state_dir),
            state_dir,
            backend: BackendChoice::Auto,
            policy: RetentionPolicy::default(),
            time_zone: TimeZone::system(),
        }
    }
}

/// `<parent>/<name>-snapshots` beside the state directory: `/var/lib/machina` gives
/// `/var/lib/machina-snapshots`. Beside, not inside, so a btrfs snapshot of the state
/// subvolume never contains (or is swapped away with) the snapshots themselves.
pub fn default_snapshot_dir(state_dir: &Path) -> PathBuf {
    let name = state_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    state_dir.with_file_name(format!("{name}-snapshots"))
}
