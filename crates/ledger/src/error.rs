//! Ledger errors: a closed set callers branch on, each with a stable kind.

use machina_core::ErrorKind;

/// Why a ledger operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The named object does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The transition is not legal from the current state.
    #[error("{0}")]
    IllegalState(String),
    /// Retry of a run that already succeeded.
    #[error("{0}")]
    RetryDrift(String),
    /// Over the recipe's caps.
    #[error("{0}")]
    PolicyViolation(String),
    /// Conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// The caller's lease is no longer theirs (expired and reclaimed, or fenced by a newer attempt).
    #[error("stale lease: {0}")]
    StaleLease(String),
    /// Another process held the write lock longer than the busy timeout.
    #[error("the ledger is locked by another process (busy for longer than the busy timeout); retry shortly")]
    Busy,
    /// The filesystem holding the ledger or artifacts is full.
    #[error("the disk holding the ledger is full; free space and retry (nothing was written)")]
    DiskFull,
    /// The database was written by a newer machina.
    #[error(
        "ledger {path} has schema version {found}, this build supports up to {supported}: upgrade machina or restore a matching snapshot"
    )]
    SchemaTooNew {
        /// Database path.
        path: String,
        /// Version found in the file.
        found: i64,
        /// Highest version this build knows.
        supported: i64,
    },
    /// Stored content does not match its hash.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// Filesystem error outside SQLite.
    #[error("{0}")]
    Io(String),
    /// Any other database error.
    #[error("ledger database error: {0}")]
    Db(String),
    /// The disk did not confirm a write (`fdatasync` failed): this process writes no more
    /// and must restart, re-reading what is really on disk.
    #[error("{0}")]
    Poisoned(String),
    /// The writer thread has stopped (process shutting down).
    #[error("the ledger writer has stopped")]
    Closed,
}

impl LedgerError {
    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::IllegalState(_) => ErrorKind::IllegalState,
            Self::RetryDrift(_) => ErrorKind::RetryDrift,
            Self::PolicyViolation(_) => ErrorKind::QueuePolicyViolation,
            Self::Conflict(_) | Self::StaleLease(_) => ErrorKind::Conflict,
            Self::Busy | Self::DiskFull | Self::Closed | Self::Poisoned(_) => ErrorKind::Unavailable,
            Self::Integrity(_) => ErrorKind::Integrity,
            Self::SchemaTooNew { .. } | Self::Io(_) | Self::Db(_) => ErrorKind::Internal,
        }
    }

    /// Whether the process can do no more useful work with this ledger and must restart.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Poisoned(_))
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound { what, id: id.into() }
    }
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy,
            Some(ErrorCode::DiskFull) => Self::DiskFull,
            _ => Self::Db(e.to_string()),
        }
    }
}

impl From<std::io::Error> for LedgerError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            return Self::DiskFull;
        }
        Self::Io(e.to_string())
    }
}

impl From<serde_json::Error> for LedgerError {
    fn from(e: serde_json::Error) -> Self {
        Self::Db(format!("stored JSON is invalid: {e}"))
    }
}

/// Result alias.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
