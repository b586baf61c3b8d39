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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
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

fn run(conn: Connection, rx: Receiver<Msg>, link: &WalLink) {
    // The database file, to flush what a pass copied (see below); without it (an in-memory or
    // unreadable path) the writer's finishing pass flushes it all, as SQLite alone would.
    let db = conn.path().filter(|p| !p.is_empty()).and_then(|p| std::fs::File::open(p).ok());
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
                    tracing::warn!(error = %e, "flushing the checkpointed database pages failed; SQLite syncs them later");
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
