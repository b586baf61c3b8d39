//! machina-snapshot: snapshots of machina's state directory (the ledger and its artifacts),
//! their retention, and restore.
//!
//! - **Backends** ([`Backend`]): a read-only btrfs snapshot when the state directory is a
//!   btrfs subvolume (after a `wal_checkpoint(TRUNCATE)`, so the copy opens without WAL
//!   recovery), else a consistent copy: SQLite online backup of the ledger plus hard links of
//!   the immutable artifacts. Chosen by the rules on [`Backend::detect`], reported by
//!   [`Snapshots::backend`], never switched silently.
//! - **Retention** ([`retention`]): a pure function of the snapshots, `now` and a time zone:
//!   one scheduled snapshot per local day (or week), the newest 5 scheduled and 10 manual kept,
//!   pinned ones never deleted.
//! - **Concurrency**: every mutating operation takes an flock on `<snapshot_dir>/.lock`
//!   without waiting; a second run gets [`CreateOutcome::Locked`] (or [`SnapshotError::Locked`]).
//!   [`Snapshots::list`] takes no lock.
//! - **Restore** ([`Snapshots::restore`]): swaps the state directory for the snapshot's by an
//!   atomic exchange, keeping the replaced state as a `pre-restore` snapshot.
//!
//! The snapshot directory (default: [`default_snapshot_dir`], beside the state, never inside):
//!
//! ```text
//! <snapshot_dir>/.lock            flock'ed by every mutating operation
//! <snapshot_dir>/<id>/            a snapshot: a read-only btrfs subvolume, or a plain tree
//!                                 (ledger.db + artifacts/, owners and modes mirrored)
//! <snapshot_dir>/<id>.json        its metadata (SnapshotMeta), written last: the commit point
//! <snapshot_dir>/.partial-<id>/   a copy being built
//! ```
//!
//! A tree without its `.json` (or a `.partial-*`) is what an interrupted run left; the next
//! create or prune removes it. Anything else in the directory is left alone.
//!
//! Synchronous and blocking: call it from a oneshot service or `spawn_blocking`.

mod backend;
mod btrfs;
pub mod cli;
mod config;
mod copy;
mod error;
mod fsutil;
mod lock;
mod meta;
mod policy;
mod restore;
mod services;
mod sqlite;

/// The date crate of this API (`Timestamp`, `tz::TimeZone`), re-exported so callers use the same version.
pub use jiff;

pub use backend::{Backend, fs_type_name};
pub use config::{BackendChoice, Cadence, RetentionPolicy, SnapshotConfig, default_snapshot_dir};
pub use error::{Result, SnapshotError};
pub use lock::LOCK_FILE;
pub use meta::{Kind, LABEL_MAX_CHARS, SnapshotMeta, is_valid_id};
pub use policy::{Decision, period_of, retention};
pub use restore::{Exchange, RestoreReport};

use jiff::Timestamp;
use machina_core::log::{MSG_SNAPSHOT_CREATED, MSG_SNAPSHOT_FAILED, MSG_SNAPSHOT_PRUNED};
use machina_ledger::LEDGER_FILE;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a request to create a snapshot came to.
///
/// As JSON: `{"outcome": "created" | "already-done", "snapshot": {…}}` or `{"outcome": "locked"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", content = "snapshot", rename_all = "kebab-case")]
pub enum CreateOutcome {
    /// A new snapshot.
    Created(SnapshotMeta),
    /// Scheduled only: one was already made in the current period (today, for daily); this one.
    AlreadyDone(SnapshotMeta),
    /// Another snapshot operation holds the lock; nothing was done (the binary exits 0 and says so).
    Locked,
}

/// What [`Snapshots::run_scheduled`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScheduledRun {
    /// Whether a scheduled snapshot was made.
    pub outcome: CreateOutcome,
    /// Snapshots deleted by retention afterwards (empty when locked).
    pub pruned: Vec<SnapshotMeta>,
}

/// The snapshots of one state directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    cfg: SnapshotConfig,
    backend: Backend,
}

impl Snapshots {
    /// Check the configuration, create the snapshot directory (mode 0700: snapshots hold the
    /// whole ledger) and decide the backend. Fails with a message saying what to change.
    pub fn open(cfg: SnapshotConfig) -> Result<Self> {
        cfg.policy.validate()?;
        if !cfg.state_dir.is_dir() {
            return Err(SnapshotError::InvalidConfig(format!(
                "state directory {} does not exist or is not a directory",
                cfg.state_dir.display()
            )));
        }
        check_not_nested(&cfg.state_dir, &cfg.snapshot_dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.snapshot_dir)
            .map_err(|e| SnapshotError::io_at("cannot create the snapshot directory", &cfg.snapshot_dir, e))?;
        let backend = Backend::detect(&cfg.state_dir, &cfg.snapshot_dir, cfg.backend)?;
        Ok(Self { cfg, backend })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SnapshotConfig {
        &self.cfg
    }

    /// Every snapshot, oldest first. Takes no lock (metadata files are replaced atomically).
    pub fn list(&self) -> Result<Vec<SnapshotMeta>> {
        meta::list(&self.cfg.snapshot_dir)
    }

    /// One snapshot by id.
    pub fn get(&self, id: &str) -> Result<SnapshotMeta> {
        meta::read(&self.cfg.snapshot_dir, id)
    }

    /// What retention would do now (for status displays; changes nothing).
    pub fn decide(&self, now: Timestamp) -> Result<Decision> {
        Ok(retention(&self.cfg.policy, &self.list()?, now, &self.cfg.time_zone))
    }

    /// Make a snapshot of `kind` (`Scheduled` or `Manual`; pre-restore ones are made by
    /// restore). A scheduled one is skipped when the current period already has one. Does not
    /// prune: see [`run_scheduled`](Self::run_scheduled) and [`prune`](Self::prune).
    pub fn create(&self, kind: Kind, label: Option<&str>, now: Timestamp) -> Result<CreateOutcome> {
        if kind == Kind::PreRestore {
            return Err(SnapshotError::InvalidInput("pre-restore snapshots are made by restore only".into()));
        }
        let label = meta::clean_label(label)?;
        let Some(_lock) = lock::try_lock(&self.cfg.snapshot_dir)? else {
            return Ok(self.locked());
        };
        if kind == Kind::Scheduled
            && let Some(done) = self.satisfied(now)?
        {
            return Ok(CreateOutcome::AlreadyDone(done));
        }
        self.logged(self.create_locked(kind, label, now)).map(CreateOutcome::Created)
    }

    /// The timer's job: make the scheduled snapshot if it is due, then apply retention, under
    /// one lock.
    pub fn run_scheduled(&self, now: Timestamp) -> Result<ScheduledRun> {
        let Some(_lock) = lock::try_lock(&self.cfg.snapshot_dir)? else {
            return Ok(ScheduledRun { outcome: self.locked(), pruned: Vec::new() });
        };
        let outcome = match self.satisfied(now)? {
            Some(done) => {
                tracing::info!(snapshot = %done.id, "a scheduled snapshot was already made in this period");
                CreateOutcome::AlreadyDone(done)
            }
            None => CreateOutcome::Created(self.logged(self.create_locked(Kind::Scheduled, None, now))?),
        };
        let pruned = self.logged(self.prune_locked(now))?;
        Ok(ScheduledRun { outcome, pruned })
    }

    /// Delete what retention says to delete; returns what was deleted.
    pub fn prune(&self, now: Timestamp) -> Result<Vec<SnapshotMeta>> {
        let _lock = lock::lock_or_fail(&self.cfg.snapshot_dir)?;
        self.logged(self.prune_locked(now))
    }

    /// Pin (never deleted by retention, nor by delete) or unpin a snapshot.
    pub fn pin(&self, id: &str, pinned: bool) -> Result<SnapshotMeta> {
        let _lock = lock::lock_or_fail(&self.cfg.snapshot_dir)?;
        let mut m = self.get(id)?;
        if m.pinned != pinned {
            m.pinned = pinned;
            meta::write(&self.cfg.snapshot_dir, &m)?;
            tracing::info!(snapshot = %m.id, pinned, "snapshot {}", if pinned { "pinned" } else { "unpinned" });
        }
        Ok(m)
    }

    /// Delete a snapshot (refused while it is pinned).
    pub fn delete(&self, id: &str) -> Result<SnapshotMeta> {
        let _lock = lock::lock_or_fail(&self.cfg.snapshot_dir)?;
        let m = self.get(id)?;
        if m.pinned {
            return Err(SnapshotError::Pinned(m.id));
        }
        self.delete_locked(&m)?;
        tracing::info!(snapshot = %m.id, backend = %m.backend, "snapshot deleted");
        Ok(m)
    }

    fn locked(&self) -> CreateOutcome {
        tracing::info!(lock = %lock::lock_path(&self.cfg.snapshot_dir).display(),
            "another snapshot run holds the lock; nothing to do");
        CreateOutcome::Locked
    }

    /// Log a failure with the failure MESSAGE_ID, once, where it leaves the library.
    fn logged<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            tracing::error!(message_id = MSG_SNAPSHOT_FAILED, backend = %self.backend, kind = %e.kind(),
                error = %e, "snapshot operation failed");
        }
        r
    }

    /// The scheduled snapshot already made in the current period, if any.
    fn satisfied(&self, now: Timestamp) -> Result<Option<SnapshotMeta>> {
        let all = self.list()?;
        let d = retention(&self.cfg.policy, &all, now, &self.cfg.time_zone);
        Ok(d.satisfied_by.and_then(|id| all.into_iter().find(|m| m.id == id)))
    }

    /// Make a snapshot; the caller holds the lock.
    pub(crate) fn create_locked(&self, kind: Kind, label: Option<String>, now: Timestamp) -> Result<SnapshotMeta> {
        let started = Instant::now();
        self.clean_leftovers()?;
        let dir = &self.cfg.snapshot_dir;
        let id = meta::new_id(kind, now, |id| dir.join(id).exists() || meta::meta_path(dir, id).exists());
        let dst = dir.join(&id);
        let ledger = self.cfg.state_dir.join(LEDGER_FILE);
        let schema_version = match self.backend {
            Backend::Btrfs => {
                sqlite::checkpoint_truncate(&ledger)?;
                let v = sqlite::schema_version(&ledger)?;
                btrfs::snapshot_read_only(&self.cfg.state_dir, &dst)?;
                v
            }
            Backend::Copy => {
                let partial = dir.join(format!("{}{id}", meta::PARTIAL_PREFIX));
                let built = copy::copy_state(&self.cfg.state_dir, &partial)
                    .and_then(|_| sqlite::schema_version(&partial.join(LEDGER_FILE)));
                let v = built.inspect_err(|_| {
                    let _ = fsutil::remove_tree(&partial);
                })?;
                std::fs::rename(&partial, &dst).map_err(|e| SnapshotError::io_at("cannot rename", &partial, e))?;
                fsutil::fsync_dir(dir)?;
                v
            }
        };
        let (size_bytes, artifacts) = copy::sizes(&dst)?;
        let m = SnapshotMeta {
            id,
            kind,
            label,
            created_at: now,
            local_day: now.to_zoned_datetime(self.cfg.time_zone.clone()).date(),
            pinned: false,
            backend: self.backend,
            path: dst,
            size_bytes,
            artifacts,
            schema_version,
            machina_version: machina_core::APP_VERSION.to_string(),
        };
        // The metadata is the commit point: without it the tree is a leftover, removed next time.
        meta::write(dir, &m).inspect_err(|_| {
            let _ = self.remove_tree(&m.path);
        })?;
        tracing::info!(message_id = MSG_SNAPSHOT_CREATED, snapshot = %m.id, backend = %self.backend,
            kind = %m.kind, size_bytes, artifacts, elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot {} created ({})", m.id, self.backend);
        Ok(m)
    }

    fn prune_locked(&self, now: Timestamp) -> Result<Vec<SnapshotMeta>> {
        self.clean_leftovers()?;
        let all = self.list()?;
        let decision = retention(&self.cfg.policy, &all, now, &self.cfg.time_zone);
        let mut pruned = Vec::new();
        for m in all.into_iter().filter(|m| decision.prune.contains(&m.id)) {
            self.delete_locked(&m)?;
            pruned.push(m);
        }
        if !pruned.is_empty() {
            let ids: Vec<&str> = pruned.iter().map(|m| m.id.as_str()).collect();
            tracing::info!(message_id = MSG_SNAPSHOT_PRUNED, backend = %self.backend, count = pruned.len(),
                snapshots = %ids.join(" "), "{} snapshot(s) deleted by retention", pruned.len());
        }
        Ok(pruned)
    }

    /// Metadata first (the snapshot is gone from then on), then the tree.
    fn delete_locked(&self, m: &SnapshotMeta) -> Result<()> {
        let path = meta::meta_path(&self.cfg.snapshot_dir, &m.id);
        std::fs::remove_file(&path).map_err(|e| SnapshotError::io_at("cannot remove", &path, e))?;
        fsutil::fsync_dir(&self.cfg.snapshot_dir)?;
        self.remove_tree(&self.cfg.snapshot_dir.join(&m.id))
    }

    /// Remove a snapshot tree or leftover: subvolume delete on btrfs, recursive removal otherwise.
    pub(crate) fn remove_tree(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Btrfs => btrfs::remove_any(path),
            Backend::Copy => fsutil::remove_tree(path),
        }
    }

    /// Remove what interrupted runs left in the snapshot directory: partial copies, trees
    /// without metadata, metadata temp files. Anything else there is not ours and is left alone.
    fn clean_leftovers(&self) -> Result<()> {
        let dir = &self.cfg.snapshot_dir;
        let entries = std::fs::read_dir(dir).map_err(|e| SnapshotError::io_at("cannot list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io_at("cannot list", dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let path = entry.path();
            let orphan_tree = meta::is_generated_id(&name) && !meta::meta_path(dir, &name).exists();
            let partial = name.strip_prefix(meta::PARTIAL_PREFIX).is_some_and(meta::is_generated_id);
            if partial || orphan_tree {
                tracing::warn!(path = %path.display(), "removing what an interrupted snapshot run left behind");
                self.remove_tree(&path)?;
            } else if name.starts_with('.') && name.ends_with(".json.tmp") {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// Where the state's ledger is.
    pub(crate) fn ledger_path(&self) -> PathBuf {
        self.cfg.state_dir.join(LEDGER_FILE)
    }
}

/// Refuse a snapshot directory inside the state directory (it would be snapshotted, copied
/// into itself, and swapped away by a restore) or around it.
fn check_not_nested(state_dir: &Path, snapshot_dir: &Path) -> Result<()> {
    let state = canonical_lenient(state_dir)?;
    let snaps = canonical_lenient(snapshot_dir)?;
    if snaps.starts_with(&state) || state.starts_with(&snaps) {
        return Err(SnapshotError::InvalidConfig(format!(
            "the snapshot directory {} must be beside the state directory {}, not inside it (nor around it)",
            snapshot_dir.display(),
            state_dir.display()
        )));
    }
    Ok(())
}

/// `path` with its longest existing prefix canonicalized (the rest may not exist yet).
fn canonical_lenient(path: &Path) -> Result<PathBuf> {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        match cur.canonicalize() {
            Ok(c) => return Ok(rest.iter().rev().fold(c, |acc: PathBuf, part| acc.join(part))),
            Err(e) => match (cur.parent(), cur.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    cur = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                }
                _ => return Err(SnapshotError::io_at("cannot resolve", path, e)),
            },
        }
    }
}
