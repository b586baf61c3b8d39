//! The one writer thread of a process, batching concurrent writes into one
//! `BEGIN IMMEDIATE` transaction (group commit).
//!
//! Each job runs inside its own savepoint, so one failing job rolls back only
//! itself; every job's result is delivered only after the shared COMMIT
//! returned, so an acknowledged write is durable.

use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

use crate::error::{LedgerError, Result};
use machina_core::Clock;

/// Most jobs committed together.
pub const MAX_BATCH: usize = 512;
/// Longest wait for the clients of the previous batch before committing a smaller one.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);
/// Jobs waiting for the writer before senders wait too.
pub const QUEUE_DEPTH: usize = 4096;

/// Where a job's result goes.
enum Reply<T> {
    Async(oneshot::Sender<Result<T>>),
    Blocking(std::sync::mpsc::SyncSender<Result<T>>),
}

impl<T> Reply<T> {
    fn send(self, v: Result<T>) {
        // A caller that gave up waiting is not an error of the writer.
        let _ = match self {
            Reply::Async(s) => s.send(v).map_err(drop),
            Reply::Blocking(s) => s.send(v).map_err(drop),
        };
    }
}

/// A unit of work for the writer thread. Jobs are re-runnable: a batch runs first
/// without savepoints and, only if one of its jobs fails, again with one savepoint each.
trait Job: Send {
    /// Run against the open transaction, keeping the result; returns whether it failed.
    fn run(&mut self, conn: &Connection, now: i64) -> bool;
    /// Send the kept result, or `commit_err` if the transaction did not commit.
    fn deliver(self: Box<Self>, commit_err: Option<&LedgerError>);
    /// The job could not run at all.
    fn fail(self: Box<Self>, err: LedgerError);
    /// The error of its last run, if it failed.
    fn error(&self) -> Option<LedgerError>;
}

struct WriteJob<F, T> {
    f: F,
    result: Option<Result<T>>,
    reply: Reply<T>,
}

impl<F, T> Job for WriteJob<F, T>
where
    T: Send + 'static,
    F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        let res = (self.f)(conn, now);
        let failed = res.is_err();
        self.result = Some(res);
        failed
    }

    fn deliver(self: Box<Self>, commit_err: Option<&LedgerError>) {
        let out = match (commit_err, self.result) {
            (Some(e), _) => Err(e.clone()),
            (None, Some(r)) => r,
            (None, None) => Err(LedgerError::Db("internal: a job was delivered without running".into())),
        };
        self.reply.send(out);
    }

    fn fail(self: Box<Self>, err: LedgerError) {
        self.reply.send(Err(err));
    }

    fn error(&self) -> Option<LedgerError> {
        match &self.result {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

/// Joins the writer thread when the last ledger handle is gone (after its sender
/// dropped, so the thread has finished what was queued and exited).
pub(crate) struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl WriterThread {
    pub(crate) fn new(handle: std::thread::JoinHandle<()>) -> Self {
        Self(Some(handle))
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// Sending half; cloning is cheap.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    tx: mpsc::Sender<Box<dyn Job>>,
    counters: Arc<Counters>,
}

/// Transactions committed and operations they carried.
#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    operations: AtomicU64,
}

impl WriterHandle {
    pub(crate) fn spawn(conn: Connection, clock: Arc<dyn Clock>) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run(conn, rx, clock, &c))
            .map_err(|e| LedgerError::Io(format!("cannot start the ledger writer thread: {e}")))?;
        Ok((Self { tx, counters }, handle))
    }

    /// (transactions, operations) so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (self.counters.transactions.load(Ordering::Relaxed), self.counters.operations.load(Ordering::Relaxed))
    }

    /// Run `f` in the next group commit; resolves after COMMIT.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        let job = Box::new(WriteJob { f, result: None, reply: Reply::Async(otx) });
        self.tx.send(job).await.map_err(|_| LedgerError::Closed)?;
        orx.await.map_err(|_| LedgerError::Closed)?
    }

    /// Same as [`write`](Self::write), for a thread outside the async runtime.
    pub(crate) fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (otx, orx) = std::sync::mpsc::sync_channel(1);
        let job = Box::new(WriteJob { f, result: None, reply: Reply::Blocking(otx) });
        self.tx.blocking_send(job).map_err(|_| LedgerError::Closed)?;
        orx.recv().map_err(|_| LedgerError::Closed)?
    }
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, clock: Arc<dyn Clock>, counters: &Counters) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut last_len = 0;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        drain(&mut rx, &mut batch);
        // Clients that were in the last batch are likely about to send again (a worker's
        // next claim follows its commit): wait a moment for them, so one fsync covers all.
        if batch.len() < last_len {
            let until = std::time::Instant::now() + LINGER;
            while batch.len() < last_len && std::time::Instant::now() < until {
                std::thread::yield_now();
                drain(&mut rx, &mut batch);
            }
        }
        last_len = batch.len();
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
        commit_batch(&conn, &mut batch, clock.now_ms());
    }
    tracing::debug!("ledger writer: all handles dropped, exiting");
}

fn drain(rx: &mut mpsc::Receiver<Box<dyn Job>>, batch: &mut Vec<Box<dyn Job>>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, now: i64) {
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        let err = LedgerError::from(e);
        for job in batch.drain(..) {
            job.fail(err.clone());
        }
        return;
    }
    // Fast path: no savepoints (their page copies cost more than the jobs themselves).
    let mut any_failed = false;
    for job in batch.iter_mut() {
        any_failed |= job.run(conn, now);
    }
    if any_failed {
        if conn.is_autocommit() {
            // SQLite already rolled the whole transaction back (disk full, I/O error):
            // nothing was written; every job learns why.
            return abort(batch);
        }
        if batch.len() == 1 {
            let _ = exec_cached(conn, "ROLLBACK");
            return deliver_all(batch, None);
        }
        // Undo everything and run the batch again, each job in its own savepoint, so only
        // the failing ones are rolled back.
        let again = exec_cached(conn, "ROLLBACK")
            .and_then(|_| exec_cached(conn, "BEGIN IMMEDIATE"))
            .map_err(|e| Some(LedgerError::from(e)))
            .and_then(|_| rerun_with_savepoints(conn, batch, now));
        match again {
            Ok(()) => {}
            Err(None) => return abort(batch),
            Err(Some(e)) => {
                let _ = conn.execute_batch("ROLLBACK");
                return deliver_all(batch, Some(&e));
            }
        }
    }
    let commit_err = exec_cached(conn, "COMMIT").err().map(LedgerError::from);
    if let Some(e) = &commit_err {
        tracing::error!(error = %e, "ledger writer: COMMIT failed; the batch was rolled back");
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    deliver_all(batch, commit_err.as_ref());
}

fn deliver_all(batch: &mut Vec<Box<dyn Job>>, commit_err: Option<&LedgerError>) {
    for job in batch.drain(..) {
        job.deliver(commit_err);
    }
}

/// The transaction is gone: failed jobs get their own error, the others the first one.
fn abort(batch: &mut Vec<Box<dyn Job>>) {
    let cause = batch.iter().find_map(|j| j.error()).unwrap_or(LedgerError::Db("transaction aborted".into()));
    tracing::error!(error = %cause, "ledger writer: the transaction was rolled back by SQLite");
    for job in batch.drain(..) {
        if job.error().is_some() { job.deliver(None) } else { job.deliver(Some(&cause)) }
    }
}

/// Err(None): SQLite aborted the transaction during a job (see `abort`).
fn rerun_with_savepoints(
    conn: &Connection,
    batch: &mut [Box<dyn Job>],
    now: i64,
) -> std::result::Result<(), Option<LedgerError>> {
    let step = |sql| exec_cached(conn, sql).map_err(|e| Some(LedgerError::from(e)));
    for job in batch.iter_mut() {
        step("SAVEPOINT job")?;
        if job.run(conn, now) {
            if conn.is_autocommit() {
                return Err(None);
            }
            step("ROLLBACK TO job")?;
        }
        step("RELEASE job")?;
    }
    Ok(())
}
