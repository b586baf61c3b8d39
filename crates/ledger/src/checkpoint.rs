//! The background checkpointer: copies committed WAL frames into the database file
//! from its own connection and thread, so the writer's commits never pay for it.
//!
//! Every process that writes runs one; PASSIVE checkpoints never block writers or
//! readers, and two processes checkpointing at once simply take turns.

use rusqlite::Connection;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the checkpointer looks at the WAL.
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;

/// Stops and joins the checkpointer thread when dropped.
pub(crate) struct Checkpointer {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn spawn(conn: Connection) -> std::io::Result<Self> {
        let (stop, rx) = channel();
        let thread = std::thread::Builder::new().name("ledger-checkpoint".into()).spawn(move || run(conn, rx))?;
        Ok(Self { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: Connection, stop: Receiver<()>) {
    // Wakes every interval; a message or a dropped sender means stop.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MS)) {
        // (busy, wal frames, checkpointed frames); a busy result just means next time.
        let r: rusqlite::Result<(i64, i64, i64)> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
        if let Err(e) = r {
            tracing::warn!(error = %e, "background checkpoint failed; will retry");
        }
    }
    // Leave the file compact for the next start and for backups.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
}
