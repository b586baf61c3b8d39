//! Snapshot errors: a closed set callers branch on, each with a stable kind.
//!
//! Every message says what was wrong and what to do about it; the binaries print
//! it as is. `kind()` maps onto machina's one error vocabulary
//! ([`machina_core::ErrorKind`]) for logs, exit codes and D-Bus error names.

use machina_core::ErrorKind;
use std::path::Path;

/// Why a snapshot operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// The configuration cannot work (bad retention counts, overlapping directories…).
    #[error("invalid snapshot configuration: {0}")]
    InvalidConfig(String),
    /// The state directory is on btrfs but is not a subvolume, and the backend was left on auto.
    #[error(
        "state directory {state_dir} is on btrfs but is not a btrfs subvolume, so it cannot be snapshotted \
         atomically: make it a subvolume (stop machina, `btrfs subvolume create` a new one, move the contents \
         in, rename it into place) or choose the copy backend explicitly"
    )]
    NotSubvolume {
        /// The state directory.
        state_dir: String,
    },
    /// The btrfs backend was asked for but the state directory is not a btrfs subvolume.
    #[error(
        "the btrfs backend needs the state directory to be a btrfs subvolume, and {state_dir} is not ({why}); \
         use the copy backend or make it a subvolume"
    )]
    NotBtrfs {
        /// The state directory.
        state_dir: String,
        /// What it is instead.
        why: String,
    },
    /// The snapshot directory is on another filesystem (or btrfs subvolume) than the state.
    #[error(
        "snapshot directory {snapshot_dir} is not on the same filesystem as the state directory {state_dir} \
         ({why}); {backend} snapshots need both on one filesystem: move the snapshot directory"
    )]
    CrossDevice {
        /// The state directory.
        state_dir: String,
        /// The snapshot directory.
        snapshot_dir: String,
        /// Which backend needs it.
        backend: &'static str,
        /// What differs.
        why: String,
    },
    /// No snapshot has this id.
    #[error("snapshot {0} not found (list the snapshots to see their ids)")]
    NotFound(String),
    /// The caller passed a bad argument (label, id, kind).
    #[error("{0}")]
    InvalidInput(String),
    /// Another snapshot operation holds the lock.
    #[error("another snapshot operation is running (it holds {0}); try again when it has finished")]
    Locked(String),
    /// The snapshot is pinned, so it cannot be deleted.
    #[error("snapshot {0} is pinned: unpin it first if you really want to delete it")]
    Pinned(String),
    /// The snapshot was made by another backend than the one now in use.
    #[error(
        "snapshot {id} was made by the {made_by} backend but the state directory now uses {current}; \
         restore it by hand (its files are in {path})"
    )]
    BackendMismatch {
        /// Snapshot id.
        id: String,
        /// Backend that made it.
        made_by: &'static str,
        /// Backend in use now.
        current: &'static str,
        /// Where the snapshot's files are.
        path: String,
    },
    /// The snapshot's ledger was written by a newer machina.
    #[error(
        "snapshot {id} holds a ledger of schema version {found}, newer than this build supports ({supported}): \
         upgrade machina before restoring it"
    )]
    SchemaTooNew {
        /// Snapshot id.
        id: String,
        /// Version in the snapshot.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// The state directory holds no ledger to snapshot.
    #[error("no ledger at {0}: nothing to snapshot (has machina ever run with this state directory?)")]
    NoLedger(String),
    /// A ledger or snapshot failed its integrity check.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The filesystem is full.
    #[error("the disk is full: {0}; free space (delete old snapshots) and retry")]
    DiskFull(String),
    /// A btrfs operation failed.
    #[error("btrfs: {0}")]
    Btrfs(String),
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Db(String),
    /// A filesystem operation failed.
    #[error("{0}")]
    Io(String),
}

impl SnapshotError {
    /// The stable kind (its `as_str()` is what logs, exit codes and D-Bus errors use).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidConfig(_)
            | Self::NotSubvolume { .. }
            | Self::NotBtrfs { .. }
            | Self::CrossDevice { .. }
            | Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::NotFound(_) | Self::NoLedger(_) => ErrorKind::NotFound,
            Self::Locked(_) | Self::DiskFull(_) => ErrorKind::Unavailable,
            Self::Pinned(_) | Self::BackendMismatch { .. } | Self::SchemaTooNew { .. } => ErrorKind::IllegalState,
            Self::Integrity(_) => ErrorKind::Integrity,
            Self::Btrfs(_) | Self::Db(_) | Self::Io(_) => ErrorKind::Internal,
        }
    }

    /// An I/O error with what was being done (`context`) in front.
    pub(crate) fn io(context: impl std::fmt::Display, e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(nix::libc::ENOSPC) {
            return Self::DiskFull(format!("{context}: {e}"));
        }
        Self::Io(format!("{context}: {e}"))
    }

    /// An I/O error about `path`.
    pub(crate) fn io_at(what: &str, path: &Path, e: std::io::Error) -> Self {
        Self::io(format_args!("{what} {}", path.display()), e)
    }

    /// A SQLite error with context.
    pub(crate) fn db(context: impl std::fmt::Display, e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            return Self::DiskFull(format!("{context}: {e}"));
        }
        Self::Db(format!("{context}: {e}"))
    }

    /// A libbtrfsutil error with context.
    pub(crate) fn btrfs(context: impl std::fmt::Display, e: libbtrfsutil::Error) -> Self {
        if e.errno() == nix::libc::ENOSPC {
            return Self::DiskFull(format!("{context}: {e}"));
        }
        Self::Btrfs(format!("{context}: {e} ({})", e.os_error()))
    }
}

/// Result alias.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;
