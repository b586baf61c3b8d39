//! The background checkpointer: copies committed WAL frames into the database file
//! from its own connection and thread, so the writer's commits never pay for it.
//!
//! Every process that writes runs one; PASSIVE checkpoints never block writers or
//! readers, and two processes checkpointing at once simply take turns.
//!
//! Keeping the WAL short matters for more than disk space. SQLite starts the WAL over
//! (overwriting its first frames) only when a write transaction begins with every frame
//! already copied. Under a steady stream of commits a checkpoint on another connection
//! never catches up with the last frame, so the WAL would grow for as long as the load
//! lasts, and every commit would extend the file: each `fdatasync` would then also journal
//! the new size, about twice its cost. So once the WAL (its length comes from the WAL hook)
//! passes [`WAKE_FRAMES`], the writer wakes the checkpointer, which copies nearly everything
//! without blocking anyone; and between two batches the writer copies the few frames
//! committed meanwhile itself ([`WalLink::finish`]), after which its next transaction starts
//! the WAL over. The checkpointer flushes the database file after each pass, because the
//! finishing pass's sync (SQLite's, on the writer thread) would otherwise write back every
//! page the checkpointer copied.

use rusqlite::Connection;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the checkpointer looks at the WAL when nobody wakes it.
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;
/// WAL frames (4 KiB pages) above which the writer has the WAL copied and started over
/// (16 MiB). Each start-over costs the writer two syncs (of the WAL, and of the database
/// file after its last copy), so under load it is kept rare: at 8 MiB, the writer spent
/// ~10% of a 100,000-task enqueue waiting in them.
pub const WAKE_FRAMES: i64 = 4096;
/// Frames not yet copied under which the writer finishes a checkpoint itself (2 MiB):
/// a short pause between batches, rather than a WAL that never starts over.
pub const FINISH_FRAMES: i64 = 512;

enum Msg {
    Wake,
    Stop,
}

/// What the writer and the checkpointer know of each other's progress.
pub(crate) struct WalLink {
    wake: Sender<Msg>,
    /// Frames in the WAL after the writer's last commit (from the WAL hook).
    frames: AtomicI64,
    /// Frames in the WAL at the checkpointer's last complete pass, and how many it copied:
    /// a pass over a longer WAL than the current one was over an earlier WAL (it has started
    /// over since) and says nothing about this one.
    pass_frames: AtomicI64,
    copied: AtomicI64,
    /// A pass the writer asked for has not finished yet.
    running: AtomicBool,
}

impl WalLink {
    /// Install the WAL hook on the writer's connection (this replaces SQLite's own automatic
    /// checkpoint, which would copy every frame on the writer thread).
    pub(crate) fn hook(self: &Arc<Self>, conn: &mut Connection) -> rusqlite::Result<()> {
        let link = self.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            link.frames.store(frames.into(), Ordering::Relaxed);
            Ok(())
        }))
    }

    /// Between batches, on the writer's connection: when the WAL is long, have the
    /// checkpointer copy it; once all but a little is copied, copy the rest here, so the
    /// next transaction starts the WAL over.
    pub(crate) fn finish(&self, conn: &Connection) {
        let frames = self.frames.load(Ordering::Relaxed);
        if frames <= WAKE_FRAMES {
            return;
        }
        let copied = match (self.pass_frames.load(Ordering::Acquire), self.copied.load(Ordering::Acquire)) {
            (seen, copied) if seen <= frames => copied,
            _ => 0,
        };
        if frames - copied > FINISH_FRAMES {
            if !self.running.swap(true, Ordering::AcqRel) {
                let _ = self.wake.send(Msg::Wake);
            }
            return;
        }
        match checkpoint(conn, "PASSIVE") {
            Ok((0, n, done)) if n == done => self.frames.store(0, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "checkpoint on the writer's connection failed; next batch"),
        }
    }
}

/// Stops and joins the checkpointer thread when dropped.
pub(crate) struct Checkpointer {
    link: Arc<WalLink>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn spawn(conn: Connection) -> std::io::Result<Self> {
        let (wake, rx) = channel();
        let link = Arc::new(WalLink {
            wake,
            frames: AtomicI64::new(0),
            pass_frames: AtomicI64::new(0),
            copied: AtomicI64::new(0),
            running: AtomicBool::new(false),
        });
        let l = link.clone();
        let thread = std::thread::Builder::new().name("ledger-checkpoint".into()).spawn(move || run(conn, rx, &l))?;
        Ok(Self { link, thread: Some(thread) })
    }

    /// The link the writer uses.
    pub(crate) fn link(&self) -> Arc<WalLink> {
        self.link.clone()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = self.link.wake.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

/// The database files this process flushes, by (device, inode); each opened once and never
/// closed. Closing any descriptor of a file drops every POSIX lock the process holds on it,
/// SQLite's included (its shared lock on the database is how another process's last
/// connection knows it is not the last, before it deletes the WAL): so a descriptor opened
/// outside SQLite must outlive every connection of the process to that file.
static FLUSH_FILES: LazyLock<Mutex<HashMap<FileId, Arc<File>>>> = LazyLock::new(Default::default);

/// (device, inode): a file whatever path names it.
type FileId = (u64, u64);

/// A descriptor of the database file at `path` for flushing it, shared and never closed.
fn flush_file(path: &Path) -> std::io::Result<Arc<File>> {
    let meta = std::fs::metadata(path)?;
    // A cache: a panic elsewhere while it was locked leaves nothing half-done in it.
    let mut files = FLUSH_FILES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = files.get(&(meta.dev(), meta.ino())) {
        return Ok(f.clone());
    }
    let file = Arc::new(File::open(path)?);
    files.insert((meta.dev(), meta.ino()), file.clone());
    Ok(file)
}

fn run(conn: Connection, rx: Receiver<Msg>, link: &WalLink) {
    // The database file, to flush what a pass copied (see below); without it the writer's
    // finishing pass flushes it all, as SQLite alone would.
    let db = match conn.path().filter(|p| !p.is_empty()).map(|p| flush_file(Path::new(p))) {
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot open the ledger's database file for flushing; the writer will flush it");
            None
        }
        None => None,
    };
    let mut last_copied = 0;
    while let Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) =
        rx.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MS))
    {
        // (busy, wal frames, checkpointed frames); a busy result just means next time.
        match checkpoint(&conn, "PASSIVE") {
            // A busy pass (another process checkpointing) reports -1: keep the last one.
            Ok((0, frames, copied)) if frames >= 0 && copied >= 0 => {
                // SQLite syncs the database file only after a pass that found no newer frame
                // when it ended, which under load is the writer's finishing pass: that sync
                // would then write back every page this thread copied, with the writer (and so
                // every client) waiting 20-40 ms. Flushed here, that sync is left the last few
                // frames. (A pass reports the frames it saw at its start, so `copied == frames`
                // does not tell whether SQLite synced: a sync of a clean file costs little.)
                if copied > 0
                    && copied != last_copied
                    && let Some(db) = &db
                    && let Err(e) = db.sync_data()
                {
                    // Nothing is lost: the WAL still holds these pages, and SQLite's own sync
                    // of the file (its descriptor was open too, so it is told of the error)
                    // must succeed before the WAL may start over.
                    tracing::error!(error = %e, "flushing the checkpointed database pages failed; the WAL keeps them");
                }
                last_copied = copied;
                link.copied.store(copied, Ordering::Release);
                link.pass_frames.store(frames, Ordering::Release);
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "background checkpoint failed; will retry"),
        }
        link.running.store(false, Ordering::Release);
    }
    // Leave the file compact for the next start and for backups.
    let _ = checkpoint(&conn, "PASSIVE");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_file_is_opened_for_flushing_once_whatever_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let (path, link) = (dir.path().join("ledger.db"), dir.path().join("other-name.db"));
        std::fs::write(&path, b"").unwrap();
        std::fs::hard_link(&path, &link).unwrap();
        let (a, b) = (flush_file(&path).unwrap(), flush_file(&link).unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one descriptor per file, never a second one to close");
        drop((a, b));
        // Still open (held by the process-wide table), so no close can drop SQLite's locks.
        assert_eq!(Arc::strong_count(&flush_file(&path).unwrap()), 2);
        let missing = flush_file(&dir.path().join("missing.db")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
