//! Making commits durable: the ledger's own `fdatasync` of the WAL, off the writer thread.
//!
//! The writer's connection runs with `synchronous = NORMAL`, so SQLite's COMMIT writes the
//! WAL frames without waiting for the disk. With [`Durability::Full`](crate::Durability)
//! every result that needs durability is held until an `fdatasync` of the WAL that started
//! after its COMMIT has returned: the same guarantee as `synchronous = FULL` (the WAL is
//! append-ordered, so one sync covers every commit before it), but the writer runs the next
//! batch's SQL while the disk flushes the last one, and one sync serves several batches.
//!
//! Results that only need to be *seen* (a claim: losing it to a power cut loses the worker
//! that held it too, and the work is still queued after restart) are handed back at COMMIT.
//!
//! A failed `fdatasync` cannot be retried (the kernel may already have dropped the dirty
//! pages): the ledger is then *poisoned*, every held and later write fails with the cause,
//! and the process must restart to re-read what is really on disk.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

use crate::error::{LedgerError, Result};
use crate::writer::Counters;

/// A result held back until the commit that produced it is on disk.
pub(crate) trait Held: Send {
    /// Hand the result back, or `sync_err` if the disk did not confirm it.
    fn release(self: Box<Self>, sync_err: Option<&LedgerError>);
}

/// The value a job produced and where it goes once durable.
pub(crate) struct HeldValue<T> {
    pub(crate) value: T,
    pub(crate) reply: crate::writer::Reply<T>,
}

impl<T: Send> Held for HeldValue<T> {
    fn release(self: Box<Self>, sync_err: Option<&LedgerError>) {
        let this = *self;
        this.reply.send(match sync_err {
            None => Ok(this.value),
            Some(e) => Err(e.clone()),
        });
    }
}

/// A committed result that becomes final once durable: `.await` it for the value (or the
/// error that kept it from the disk).
#[must_use = "a pending result says whether the commit reached the disk"]
pub struct Pending<T>(pub(crate) oneshot::Receiver<Result<T>>);

impl<T> std::future::IntoFuture for Pending<T>
where
    T: Send + 'static,
{
    type Output = Result<T>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.0.await.map_err(|_| LedgerError::Closed)? })
    }
}

/// The first failed sync; set once, read by every later write.
#[derive(Default)]
pub(crate) struct Poison(OnceLock<LedgerError>);

impl Poison {
    pub(crate) fn get(&self) -> Option<&LedgerError> {
        self.0.get()
    }

    fn set(&self, e: LedgerError) -> LedgerError {
        let _ = self.0.set(e);
        self.0.get().cloned().unwrap_or(LedgerError::Closed)
    }
}

/// The WAL file, opened for syncing when the ledger opens (an fd of the inode SQLite writes).
///
/// Opened once, before the first commit it syncs: Linux reports a writeback error to the
/// file descriptors open when it happened, so an fd opened later could be told "ok" about
/// frames that never reached the disk.
pub(crate) struct WalFile {
    path: PathBuf,
    file: File,
}

impl WalFile {
    pub(crate) fn open(db_path: &std::path::Path) -> Result<Self> {
        let mut p = db_path.as_os_str().to_owned();
        p.push("-wal");
        let path = PathBuf::from(p);
        let file = File::open(&path).map_err(|e| {
            LedgerError::Io(format!("cannot open the ledger's WAL {} for syncing: {e}", path.display()))
        })?;
        Ok(Self { path, file })
    }

    /// `fdatasync` the WAL. A WAL that was removed (only an outside tool does that while a
    /// connection is open) cannot be synced any more: SQLite goes on writing the removed
    /// file, so nothing it writes can be confirmed.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        if self.file.metadata()?.nlink() == 0 {
            return Err(std::io::Error::other("the WAL file was removed while the ledger was open"));
        }
        self.file.sync_data()
    }

    /// Sync and release `held`; a failure poisons the ledger.
    pub(crate) fn sync_and_release(&mut self, held: Vec<Box<dyn Held>>, poison: &Poison, counters: &Counters) {
        let started = std::time::Instant::now();
        let synced = self.sync();
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        counters.sync_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let err = match poison.get() {
            Some(e) => Some(e.clone()),
            None => synced.err().map(|e| {
                tracing::error!(error = %e, wal = %self.path.display(),
                    "fdatasync of the ledger's WAL failed: refusing further writes; restart the service");
                poison.set(LedgerError::Poisoned(format!(
                    "the disk refused to confirm a ledger write (fdatasync {}: {e}); the process must restart",
                    self.path.display()
                )))
            }),
        };
        for h in held {
            h.release(err.as_ref());
        }
    }
}

/// The syncer thread: takes the held results of committed batches, syncs once for all that
/// are waiting, and releases them.
pub(crate) struct Syncer {
    handle: Option<SyncHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Hands results to the syncer thread; cloned into the ledger's handles for sync barriers.
#[derive(Clone)]
pub(crate) struct SyncHandle {
    tx: std::sync::mpsc::Sender<Vec<Box<dyn Held>>>,
    /// Batches handed over and not yet released.
    in_flight: Arc<AtomicUsize>,
}

impl Syncer {
    pub(crate) fn spawn(db_path: &std::path::Path, poison: Arc<Poison>, counters: Arc<Counters>) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Box<dyn Held>>>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut wal = WalFile::open(db_path)?;
        let count = in_flight.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-sync".into())
            .spawn(move || {
                while let Ok(mut held) = rx.recv() {
                    let mut batches = 1;
                    while let Ok(more) = rx.try_recv() {
                        held.extend(more);
                        batches += 1;
                    }
                    wal.sync_and_release(held, &poison, &counters);
                    count.fetch_sub(batches, Ordering::AcqRel);
                }
            })
            .map_err(|e| LedgerError::Io(format!("cannot start the ledger sync thread: {e}")))?;
        Ok(Self { handle: Some(SyncHandle { tx, in_flight }), thread: Some(thread) })
    }

    /// A handle for handing results over from elsewhere.
    pub(crate) fn handle(&self) -> SyncHandle {
        self.handle.clone().expect("the syncer's handle lives as long as the syncer")
    }

    /// Whether a sync is in flight or queued.
    pub(crate) fn is_busy(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.in_flight.load(Ordering::Acquire) > 0)
    }

    /// Queue `held` for the next sync.
    pub(crate) fn hand_over(&self, held: Vec<Box<dyn Held>>) {
        if let Some(h) = &self.handle {
            h.hand_over(held);
        }
    }
}

impl SyncHandle {
    /// Queue `held` for the next sync (it begins after this call).
    pub(crate) fn hand_over(&self, held: Vec<Box<dyn Held>>) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if let Err(back) = self.tx.send(held) {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            for h in back.0 {
                h.release(Some(&LedgerError::Closed));
            }
        }
    }
}

impl Drop for Syncer {
    /// Drains: what was handed over is synced and released before the thread ends.
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
