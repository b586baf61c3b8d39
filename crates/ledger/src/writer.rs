//! The one writer thread of a process, batching concurrent writes into one
//! `BEGIN IMMEDIATE` transaction (group commit).
//!
//! A batch runs without savepoints and, only if one of its jobs fails, again with one
//! savepoint each, so one failing job rolls back only itself. A job's result is handed
//! back once the shared COMMIT is durable (see sync.rs), or, for claims, once it is
//! committed.

use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

use crate::appends::{AppendJob, RunIntents, run_merged};
use crate::checkpoint::WalLink;
use crate::db::Durability;
use crate::error::{LedgerError, Result};
use crate::jobs::{SplitJob, WriteJob};
use crate::publication::{self, Publish, Publisher};
use crate::sync::{Held, HeldValue, Pending, Poison, SyncHandle, Syncer, WalFile};
use machina_core::Clock;

/// Most jobs committed together.
pub const MAX_BATCH: usize = 512;
/// Longest wait for the clients of the previous batch before committing a smaller one.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);
/// Batches this large are not held back by the linger: they already share one sync among
/// many clients, and on a small machine the spin would take CPU from the clients themselves.
const LINGER_MAX_JOBS: usize = 16;
/// Smallest half of a batch that is split so that its sync overlaps the other half's SQL.
const PIPELINE_SPLIT: usize = 16;
/// Batches smaller than this (a lone job), with nobody else waiting, sync on the writer
/// thread itself: it saves a thread hop on an idle ledger; anything busier is better served
/// by the sync thread while this one takes the next clients.
const INLINE_SYNC_MAX_JOBS: usize = 2;
/// Jobs waiting for the writer before senders wait too.
pub const QUEUE_DEPTH: usize = 4096;

/// When a job's result may be handed back, and when its commit may be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ack {
    /// Answered once the commit is on disk; other connections may see it a moment before.
    Durable,
    /// Commits that create work a worker may act on outside the ledger (a plan's tasks,
    /// appended tasks, a retried run's tasks): answered once durable, and their tasks are
    /// staged for publication (publication.rs), so no task starts that a power cut could
    /// then take back.
    Published,
    /// Answered once the commit is visible: claims, whose loss to a power cut loses their
    /// holder too.
    Committed,
}

/// Where a job's result goes.
pub(crate) enum Reply<T> {
    Async(oneshot::Sender<Result<T>>),
    Blocking(std::sync::mpsc::SyncSender<Result<T>>),
}

impl<T> Reply<T> {
    pub(crate) fn send(self, v: Result<T>) {
        // A caller that gave up waiting is not an error of the writer.
        let _ = match self {
            Reply::Async(s) => s.send(v).map_err(drop),
            Reply::Blocking(s) => s.send(v).map_err(drop),
        };
    }
}

/// A unit of work for the writer thread. Jobs are re-runnable: a batch runs first
/// without savepoints and, only if one of its jobs fails, again with one savepoint each.
pub(crate) trait Job: Send {
    /// Run against the open transaction, keeping the result; returns whether it failed.
    fn run(&mut self, conn: &Connection, now: i64) -> bool;
    /// The transaction ended (`commit_err` if it did not commit): hand back what may be
    /// seen now, and return what must wait until the commit is on disk.
    fn committed(self: Box<Self>, commit_err: Option<&LedgerError>) -> Option<Box<dyn Held>>;
    /// Whether part of its result is handed back at COMMIT (its client may soon send again).
    fn early(&self) -> bool;
    /// Whether its commit must be durable before anyone sees it ([`Ack::Published`]).
    fn published(&self) -> bool {
        false
    }
    /// The job could not run at all.
    fn fail(self: Box<Self>, err: LedgerError);
    /// The error of its last run, if it failed.
    fn error(&self) -> Option<LedgerError>;
    /// An append of tasks, which the writer may merge with other appends to the same run.
    fn append_to(&mut self) -> Option<&mut AppendJob> {
        None
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
    poison: Arc<Poison>,
    /// Where a sync can be asked for without a transaction (None without syncs).
    syncer: Option<SyncHandle>,
    publisher: Arc<Publisher>,
    /// The intents of runs appended to, so clients encode their tasks themselves.
    run_intents: Arc<RunIntents>,
}

/// Transactions committed and operations they carried; syncs and the time they took.
#[derive(Default)]
pub(crate) struct Counters {
    transactions: AtomicU64,
    operations: AtomicU64,
    pub(crate) syncs: AtomicU64,
    pub(crate) sync_micros: AtomicU64,
}

impl WriterHandle {
    pub(crate) fn spawn(
        mut conn: Connection,
        clock: Arc<dyn Clock>,
        durability: Durability,
        db_path: &std::path::Path,
        wal: Arc<WalLink>,
    ) -> Result<(Self, std::thread::JoinHandle<()>)> {
        wal.hook(&mut conn)?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let publisher = Arc::new(Publisher::default());
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let poison = Arc::new(Poison::default());
        let disk = match durability {
            Durability::Full => Some(Disk {
                syncer: Syncer::spawn(db_path, poison.clone(), counters.clone())?,
                wal: WalFile::open(db_path)?,
                poison: poison.clone(),
            }),
            Durability::Normal => None,
        };
        let syncer = disk.as_ref().map(|d| d.syncer.handle());
        let writer = Writer { conn, clock, publisher: publisher.clone(), durability, wal };
        let handle = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx, &c, disk))
            .map_err(|e| LedgerError::Io(format!("cannot start the ledger writer thread: {e}")))?;
        Ok((Self { tx, counters, poison, syncer, publisher, run_intents: Arc::default() }, handle))
    }

    /// (syncs, microseconds spent in them) so far.
    pub(crate) fn sync_stats(&self) -> (u64, u64) {
        (self.counters.syncs.load(Ordering::Relaxed), self.counters.sync_micros.load(Ordering::Relaxed))
    }

    /// Why this process's writes stopped, if the disk failed to confirm one.
    pub(crate) fn poisoned(&self) -> Option<LedgerError> {
        self.poison.get().cloned()
    }

    /// (transactions, operations) so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (self.counters.transactions.load(Ordering::Relaxed), self.counters.operations.load(Ordering::Relaxed))
    }

    /// Run `f` in the next group commit; resolves once that commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
    {
        self.write_acked(Ack::Durable, f).await
    }

    /// Run `f` in the next group commit; resolves as `ack` says.
    pub(crate) async fn write_acked<T, F>(&self, ack: Ack, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        let job = Box::new(WriteJob { f, result: None, reply: Reply::Async(otx), ack });
        self.tx.send(job).await.map_err(|_| LedgerError::Closed)?;
        orx.await.map_err(|_| LedgerError::Closed)?
    }

    /// Run `f` in the next group commit; resolves at COMMIT with its first part, the second
    /// part following once the commit is durable. `early`: the caller will likely write again
    /// as soon as it has the first part (a worker's next claim), so the sync is left to the
    /// sync thread rather than holding this one.
    pub(crate) async fn write_split<A, B, F>(&self, early: bool, f: F) -> Result<(A, Pending<B>)>
    where
        A: Send + 'static,
        B: Send + 'static,
        F: Fn(&Connection, i64) -> Result<(A, B)> + Send + 'static,
    {
        let (now, now_rx) = oneshot::channel();
        let (later, later_rx) = oneshot::channel();
        let job = Box::new(SplitJob { f, early, result: None, now, later });
        self.tx.send(job).await.map_err(|_| LedgerError::Closed)?;
        let a = now_rx.await.map_err(|_| LedgerError::Closed)??;
        Ok((a, Pending(later_rx)))
    }

    /// Append `specs` to a run in the next group commit, merged with the other appends to
    /// that run in it; answered like an [`Ack::Published`] write.
    pub(crate) async fn append(&self, run_id: String, specs: Vec<machina_core::TaskSpec>) -> Result<usize> {
        let (specs, encoded) = self.run_intents.encode(&run_id, specs).await?;
        let (otx, orx) = oneshot::channel();
        let job =
            Box::new(AppendJob { run_id: run_id.clone(), specs, encoded, result: None, reply: Reply::Async(otx) });
        self.tx.send(job).await.map_err(|_| LedgerError::Closed)?;
        let added = orx.await.map_err(|_| LedgerError::Closed)??;
        if let Some(intent_id) = added.intent_id {
            self.run_intents.learn(&run_id, intent_id);
        }
        Ok(added.count)
    }

    /// Resolves once a sync of the WAL that began after this call has returned: everything
    /// committed before it (by any process) is then on disk. Tasks staged up to `seq` are
    /// recorded as durable for the next transaction to publish.
    pub(crate) async fn barrier(&self, seq: i64) -> Result<()> {
        let Some(syncer) = &self.syncer else {
            return Ok(());
        };
        let (otx, orx) = oneshot::channel();
        let held = Publish {
            seq,
            held: vec![Box::new(HeldValue { value: (), reply: Reply::Async(otx) })],
            publisher: self.publisher.clone(),
        };
        syncer.hand_over(vec![Box::new(held)]);
        orx.await.map_err(|_| LedgerError::Closed)?
    }

    /// Same as [`write`](Self::write), for a thread outside the async runtime.
    pub(crate) fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
    {
        let (otx, orx) = std::sync::mpsc::sync_channel(1);
        let job = Box::new(WriteJob { f, result: None, reply: Reply::Blocking(otx), ack: Ack::Durable });
        self.tx.blocking_send(job).map_err(|_| LedgerError::Closed)?;
        orx.recv().map_err(|_| LedgerError::Closed)?
    }
}

/// What makes commits durable under [`Durability::Full`].
struct Disk {
    syncer: Syncer,
    /// For syncing on this thread when nothing else is waiting (saves a thread hop).
    wal: WalFile,
    poison: Arc<Poison>,
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    clock: Arc<dyn Clock>,
    publisher: Arc<Publisher>,
    durability: Durability,
    wal: Arc<WalLink>,
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<Box<dyn Job>>, counters: &Counters, mut disk: Option<Disk>) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
        // The second half of a batch split for the pipeline (below), committed next.
        let mut carried: Vec<Box<dyn Job>> = Vec::new();
        let mut last_len = 0;
        loop {
            let carrying = !carried.is_empty();
            if carrying {
                batch.append(&mut carried);
            } else {
                match rx.blocking_recv() {
                    Some(first) => batch.push(first),
                    None => break,
                }
            }
            drain(&mut rx, &mut batch);
            // Clients that were in the last batch are likely about to send again (a worker's
            // next claim follows its commit): wait a moment for them, so one fsync covers all.
            // (Not for the second half of a split batch: its clients are waiting already; nor
            // for a batch that is big already.)
            let linger_for = last_len.min(LINGER_MAX_JOBS);
            if !carrying && batch.len() < linger_for {
                let until = std::time::Instant::now() + LINGER;
                while batch.len() < linger_for && std::time::Instant::now() < until {
                    std::thread::yield_now();
                    drain(&mut rx, &mut batch);
                }
            }
            if let Some(e) = disk.as_ref().and_then(|d| d.poison.get()) {
                for job in batch.drain(..) {
                    job.fail(e.clone());
                }
                continue;
            }
            // A big batch while the disk is idle: commit half now, so its sync runs while the
            // other half's SQL does, instead of every client waiting for both one after the other.
            if batch.len() >= 2 * PIPELINE_SPLIT && disk.as_ref().is_some_and(|d| !d.syncer.is_busy()) {
                carried = batch.split_off(batch.len() / 2);
            }
            last_len = batch.len();
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            counters.operations.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let early = batch.iter().any(|j| j.early());
            // A lone small batch syncs on this thread (saving a hop); anything busier leaves the
            // sync to the syncer, so this thread can take the next clients meanwhile.
            let alone = rx.is_empty() && carried.is_empty() && batch.len() < INLINE_SYNC_MAX_JOBS;
            self.commit_and_settle(&mut batch, early, disk.as_mut(), alone, counters);
            self.wal.finish(&self.conn);
        }
        tracing::debug!("ledger writer: all handles dropped, exiting");
    }

    /// Commit one batch (publishing what is known durable with it) and hand its results on.
    fn commit_and_settle(
        &self,
        batch: &mut Vec<Box<dyn Job>>,
        early: bool,
        disk: Option<&mut Disk>,
        alone: bool,
        counters: &Counters,
    ) {
        let stage = batch.iter().any(|j| j.published());
        let (durable, durability) = (self.publisher.take(), self.durability);
        let prologue = |c: &Connection| publication::prologue(c, durable, stage, durability);
        let Some(outcome) = commit_batch(&self.conn, batch, self.clock.now_ms(), &prologue) else {
            // Nothing committed: what was to be published waits for the next transaction.
            self.publisher.durable(durable);
            return;
        };
        let mut held = outcome.held;
        match (outcome.staged, self.durability) {
            // Answered once durable, and published by a later transaction.
            (Some(seq), Durability::Full) => {
                held.push(Box::new(Publish { seq, held: outcome.published, publisher: self.publisher.clone() }))
            }
            // Published by this very commit (see publication::prologue).
            _ => held.extend(outcome.published),
        }
        settle(held, early, alone, disk, counters);
    }
}

/// Release held results once their commit is durable. When the batch was small and `alone`
/// (nobody waiting to write) and no client of it was answered early (and so about to send
/// again), the sync runs on this thread; otherwise the syncer does it while this thread runs
/// the next batch.
fn settle(held: Vec<Box<dyn Held>>, early: bool, alone: bool, disk: Option<&mut Disk>, counters: &Counters) {
    if held.is_empty() {
        return;
    }
    match disk {
        None => held.into_iter().for_each(|h| h.release(None)),
        Some(d) if !early && alone && !d.syncer.is_busy() => d.wal.sync_and_release(held, &d.poison, counters),
        Some(d) => d.syncer.hand_over(held),
    }
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

type HeldList = Vec<Box<dyn Held>>;

/// What a committed batch hands on.
struct Committed {
    /// Results to hand back once the commit is durable.
    held: HeldList,
    /// Results of the jobs that staged tasks.
    published: HeldList,
    /// The sequence this batch's tasks were staged under, if it created any.
    staged: Option<i64>,
}

type Prologue<'a> = &'a dyn Fn(&Connection) -> Result<Option<i64>>;

/// Run and commit one batch, `prologue` first; `None` if nothing was committed.
fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>, now: i64, prologue: Prologue) -> Option<Committed> {
    let begin = |conn: &Connection| -> Result<Option<i64>> {
        exec_cached(conn, "BEGIN IMMEDIATE")?;
        prologue(conn).inspect_err(|_| {
            let _ = exec_cached(conn, "ROLLBACK");
        })
    };
    let mut staged = match begin(conn) {
        Ok(s) => s,
        Err(err) => {
            batch.drain(..).for_each(|job| job.fail(err.clone()));
            return None;
        }
    };
    // Fast path: no savepoints (their page copies cost more than the jobs themselves),
    // and appends to the same run merged into one.
    let any_failed = run_merged(conn, batch, now);
    if any_failed {
        if conn.is_autocommit() {
            // SQLite already rolled the whole transaction back (disk full, I/O error):
            // nothing was written; every job learns why.
            abort(batch);
            return None;
        }
        if batch.len() == 1 {
            // Nothing else to keep: roll back and answer (what was to be published waits).
            let _ = exec_cached(conn, "ROLLBACK");
            deliver_all(batch, None);
            return None;
        }
        // Undo everything and run the batch again, each job in its own savepoint, so only
        // the failing ones are rolled back.
        let again = exec_cached(conn, "ROLLBACK")
            .map_err(|e| Some(LedgerError::from(e)))
            .and_then(|_| begin(conn).map_err(Some))
            .and_then(|s| {
                staged = s;
                rerun_with_savepoints(conn, batch, now)
            });
        match again {
            Ok(()) => {}
            Err(None) => {
                abort(batch);
                return None;
            }
            Err(Some(e)) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                deliver_all(batch, Some(&e));
                return None;
            }
        }
    }
    let commit_err = exec_cached(conn, "COMMIT").err().map(LedgerError::from);
    if let Some(e) = &commit_err {
        tracing::error!(error = %e, "ledger writer: COMMIT failed; the batch was rolled back");
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        deliver_all(batch, Some(e));
        return None;
    }
    let (held, published) = deliver_all(batch, None);
    Some(Committed { held, published, staged })
}

/// Hand back what may be seen now; collect what waits for the disk (and for publication).
fn deliver_all(batch: &mut Vec<Box<dyn Job>>, commit_err: Option<&LedgerError>) -> (HeldList, HeldList) {
    let (mut held, mut published) = (Vec::new(), Vec::new());
    for job in batch.drain(..) {
        let to = if job.published() { &mut published } else { &mut held };
        to.extend(job.committed(commit_err));
    }
    (held, published)
}

/// The transaction is gone: failed jobs get their own error, the others the first one.
fn abort(batch: &mut Vec<Box<dyn Job>>) {
    let cause = batch.iter().find_map(|j| j.error()).unwrap_or(LedgerError::Db("transaction aborted".into()));
    tracing::error!(error = %cause, "ledger writer: the transaction was rolled back by SQLite");
    for job in batch.drain(..) {
        // Nothing was written, so nothing is held.
        let held = if job.error().is_some() { job.committed(None) } else { job.committed(Some(&cause)) };
        debug_assert!(held.is_none());
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
