//! machina-ledger: the one SQLite ledger (WAL) every machina process shares.
//!
//! Writes go through this process's single writer thread, which batches
//! concurrent operations into one `BEGIN IMMEDIATE` transaction (group commit)
//! and acknowledges each only after COMMIT. Reads run on a small pool of
//! reader connections via `spawn_blocking`. No rusqlite call ever runs on an
//! async runtime thread.
//!
//! SQL note: an equality between an indexed TEXT column and a bound parameter is
//! written `col = CAST(?N AS TEXT)` in statements that also ORDER BY or take
//! MIN/MAX. With the parameter bare, SQLite re-prepares such a statement on every
//! execution (it re-plans the ordered scan for each new value); the CAST keeps the
//! cached plan, which is the same index seek. This halves the writer's CPU per task.

mod appends;
mod arbitration;
mod artifacts;
mod checkpoint;
mod db;
mod dedup;
mod error;
mod fleet;
mod jobs;
mod maintain;
mod model;
mod permissions;
mod publication;
mod queries;
mod runs;
mod sync;
mod task_rows;
mod tasks;
mod writer;

use machina_core::{Clock, ErrCode, RetryPolicy, SystemClock};
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use writer::Ack;

pub use arbitration::{Arbitration, decision_name};
pub use artifacts::{ArtifactStore, is_sha256_hex};
pub use db::{BUSY_TIMEOUT_MS, Durability, Pragmas, SCHEMA_VERSION};
pub use dedup::{DedupKey, Submission, Submitted};
pub use error::{LedgerError, Result};
pub use fleet::{Overview, WorkerRecord};
pub use maintain::{PruneReport, VerifyReport, Violation};
pub use model::*;
pub use permissions::{LeaseRecord, NewLease};
pub use queries::RunFilter;
pub use runs::{CompiledPlan, NewIntent, NewRun};
pub use sync::Pending;

/// File name of the ledger inside the state directory.
pub const LEDGER_FILE: &str = "ledger.db";
/// Directory of artifacts inside the state directory.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// How to open the ledger.
#[derive(Clone)]
pub struct LedgerOptions {
    /// State directory (holds ledger.db and artifacts/).
    pub state_dir: PathBuf,
    /// Commit durability; FULL by default.
    pub durability: Durability,
    /// Which failures are retried.
    pub retry: RetryPolicy,
    /// Time source.
    pub clock: Arc<dyn Clock>,
}

impl LedgerOptions {
    /// Defaults for a state directory: FULL durability, default retry policy, wall clock.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            durability: Durability::Full,
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    const MAX_IDLE: usize = 8;

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.idle.lock().map_err(|_| LedgerError::Closed)?.pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = db::open_connection(&self.path)?;
                c.execute_batch("PRAGMA query_only = ON")?;
                c
            }
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::MAX_IDLE
        {
            idle.push(conn);
        }
        out
    }
}

/// Work handed to a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Compile a run's plan.
    Compile(Box<CompileJob>),
    /// Run a task.
    Task(ClaimedTask),
}

fn claim_work(c: &Connection, owner: &str, lease_ms: i64, now: i64) -> Result<Option<Work>> {
    if let Some(job) = runs::claim_compile(c, owner, lease_ms, now)? {
        return Ok(Some(Work::Compile(Box::new(job))));
    }
    Ok(tasks::claim(c, owner, lease_ms, now)?.map(Work::Task))
}

/// A handle on the ledger; clone freely (all clones share one writer thread).
#[derive(Clone)]
pub struct Ledger {
    // Declared first so the last handle drops its sender before joining the thread.
    writer: writer::WriterHandle,
    _writer_thread: Arc<writer::WriterThread>,
    pragmas: Arc<Pragmas>,
    _checkpointer: Arc<checkpoint::Checkpointer>,
    readers: Arc<ReaderPool>,
    artifacts: ArtifactStore,
    clock: Arc<dyn Clock>,
    retry: Arc<RetryPolicy>,
}

impl Ledger {
    /// Open (creating and migrating if needed). Blocking: call before serving, or in `spawn_blocking`.
    pub fn open(opts: LedgerOptions) -> Result<Self> {
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| LedgerError::Io(format!("cannot create state directory {}: {e}", opts.state_dir.display())))?;
        let path = opts.state_dir.join(LEDGER_FILE);
        let conn = Self::open_migrated(&path)?;
        publication::repair_at_open(&conn, &path, opts.durability)?;
        let artifacts = ArtifactStore::open(&opts.state_dir.join(ARTIFACTS_DIR))?;
        let pragmas = db::read_pragmas(&conn, opts.durability)?;
        let checkpointer = checkpoint::Checkpointer::spawn(db::open_connection(&path)?)
            .map_err(|e| LedgerError::Io(format!("cannot start the checkpointer thread: {e}")))?;
        let (writer, thread) =
            writer::WriterHandle::spawn(conn, opts.clock.clone(), opts.durability, &path, checkpointer.link())?;
        Ok(Self {
            writer,
            _writer_thread: Arc::new(writer::WriterThread::new(thread)),
            pragmas: Arc::new(pragmas),
            _checkpointer: Arc::new(checkpointer),
            readers: Arc::new(ReaderPool { path, idle: Mutex::new(Vec::new()) }),
            artifacts,
            clock: opts.clock,
            retry: Arc::new(opts.retry),
        })
    }

    /// Open the file and bring its schema up to date. SQLite answers some lock conflicts of
    /// several processes creating the same file at once (switching a new file to WAL) with an
    /// immediate SQLITE_BUSY rather than through the busy handler: those are retried.
    fn open_migrated(path: &Path) -> Result<Connection> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(db::BUSY_TIMEOUT_MS);
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            let attempt = db::open_connection(path).and_then(|mut c| {
                db::migrate(&mut c, path, machina_core::APP_VERSION)?;
                Ok(c)
            });
            match attempt {
                Err(LedgerError::Busy) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// The ledger file's path.
    pub fn path(&self) -> &Path {
        &self.readers.path
    }

    /// Current time according to the ledger's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The artifact store.
    pub fn artifacts(&self) -> &ArtifactStore {
        &self.artifacts
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || readers.with(|c| f(c, now)))
            .await
            .map_err(|e| LedgerError::Io(format!("reader task failed: {e}")))?
    }

    /// Pragmas as read back from the writer's connection when it was opened.
    pub fn pragmas(&self) -> Pragmas {
        (*self.pragmas).clone()
    }

    /// Check the ledger answers a read (for /health), without touching the write lock.
    pub async fn ping(&self) -> Result<()> {
        if let Some(e) = self.poisoned() {
            return Err(e);
        }
        self.read(|c, _| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }

    /// Why this process can write no more (a failed `fdatasync`), if so: it must restart.
    pub fn poisoned(&self) -> Option<LedgerError> {
        self.writer.poisoned()
    }

    /// WAL syncs of this process's ledger (durable commits): (syncs, microseconds in them).
    pub fn sync_stats(&self) -> (u64, u64) {
        self.writer.sync_stats()
    }

    /// Group-commit counters of this process's writer: (transactions, operations).
    pub fn writer_stats(&self) -> (u64, u64) {
        self.writer.stats()
    }

    /// Create an intent, a run, or both, replaying the first response for a known request id.
    pub async fn submit(&self, key: Option<DedupKey>, s: Submission) -> Result<Submitted> {
        self.writer.write(move |c, now| dedup::submit(c, key.as_ref(), s.clone(), now)).await
    }

    /// [`submit`](Self::submit), answered at COMMIT with the response, and once that commit is
    /// durable through the [`Pending`] part. Between the two the caller may wake workers, not
    /// answer its client: a worker's claim is not durable either, and whatever durable it
    /// writes later makes this commit durable too (the WAL is ordered), so nothing outside
    /// the ledger can happen for a submission the disk then loses.
    pub async fn submit_early(&self, key: Option<DedupKey>, s: Submission) -> Result<(Submitted, Pending<()>)> {
        self.writer.write_split(false, move |c, now| Ok((dedup::submit(c, key.as_ref(), s.clone(), now)?, ()))).await
    }

    /// Blocking variant of [`submit`](Self::submit) for threads outside the runtime.
    pub fn submit_blocking(&self, key: Option<DedupKey>, s: Submission) -> Result<Submitted> {
        self.writer.write_blocking(move |c, now| dedup::submit(c, key.as_ref(), s.clone(), now))
    }

    /// An intent by id.
    pub async fn intent(&self, id: &str) -> Result<IntentRecord> {
        let id = id.to_string();
        self.read(move |c, _| runs::load_intent(c, &id)).await
    }

    /// A run with its steps and tasks.
    pub async fn run_detail(&self, id: &str) -> Result<RunDetail> {
        let id = id.to_string();
        self.read(move |c, _| queries::run_detail(c, &id)).await
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, f: RunFilter) -> Result<Vec<RunRecord>> {
        self.read(move |c, _| queries::list_runs(c, &f)).await
    }

    /// A run's status alone.
    pub async fn run_status(&self, id: &str) -> Result<machina_core::RunStatus> {
        let id = id.to_string();
        self.read(move |c, _| queries::run_status(c, &id)).await
    }

    /// Events of a run after `after_seq`.
    pub async fn events(&self, run_id: &str, after_seq: i64, limit: u32) -> Result<Vec<EventRecord>> {
        let id = run_id.to_string();
        self.read(move |c, _| queries::events(c, &id, after_seq, limit)).await
    }

    /// Attempts of a task. Reads the whole tasks table (no index leads with the key alone:
    /// keys are unique per run and name); for diagnostics and tests.
    pub async fn attempts(&self, task_key: &str) -> Result<Vec<AttemptRecord>> {
        let key = task_key.to_string();
        self.read(move |c, _| queries::attempts(c, &key)).await
    }

    /// Record that worker `id` (process `pid`) is alive, with its sandbox preflight (JSON).
    pub async fn worker_seen(&self, id: &str, pid: u32, sandbox: Option<String>) -> Result<()> {
        let id = id.to_string();
        self.writer.write(move |c, now| fleet::worker_seen(c, &id, pid, sandbox.as_deref(), now)).await
    }

    /// Record the nonce of a signed request until `expires_at_ms`: true the first time,
    /// false for a replay (also after a restart, until it expires).
    pub async fn use_nonce(&self, nonce: &str, expires_at_ms: i64) -> Result<bool> {
        let nonce = nonce.to_string();
        self.writer.write(move |c, _| maintain::use_nonce(c, &nonce, expires_at_ms)).await
    }

    /// Workers that checked in within `online_window_ms`.
    pub async fn workers(&self, online_window_ms: i64) -> Result<Vec<WorkerRecord>> {
        self.read(move |c, now| fleet::workers(c, now - online_window_ms)).await
    }

    /// Forget worker `id` (it is stopping cleanly).
    pub async fn worker_gone(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.writer.write(move |c, _| fleet::worker_gone(c, &id)).await
    }

    /// Pause (`true`) or resume claims of new work in a partition. Running tasks finish.
    pub async fn set_partition_paused(&self, partition: &str, paused: bool) -> Result<()> {
        let key = partition.to_string();
        self.writer.write(move |c, _| fleet::set_paused(c, &key, paused)).await
    }

    /// Queue depth, runs at the gate, workers seen within `online_window_ms`, paused partitions.
    pub async fn overview(&self, online_window_ms: i64) -> Result<Overview> {
        self.read(move |c, now| fleet::overview(c, now - online_window_ms)).await
    }

    /// Delete expired dedup entries and workers not seen for `worker_gone_ms`; returns
    /// (dedup entries, workers) removed.
    pub async fn expire(&self, worker_gone_ms: i64) -> Result<(u64, u64)> {
        self.writer
            .write(move |c, now| {
                Ok((maintain::expire_dedup(c, now)?, maintain::forget_workers(c, now - worker_gone_ms)?))
            })
            .await
    }

    /// Remove finished runs last updated more than `run_retention_ms` ago (with their history,
    /// in short transactions), intents left without runs, and artifacts nothing references
    /// that were not stored in the last `artifact_grace_ms`.
    pub async fn prune(&self, run_retention_ms: i64, artifact_grace_ms: i64) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        loop {
            let n = self.writer.write(move |c, now| maintain::prune_runs(c, now - run_retention_ms)).await?;
            report.runs += n;
            if n < maintain::PRUNE_BATCH_RUNS as u64 {
                break;
            }
        }
        report.intents = self.writer.write(move |c, now| maintain::prune_intents(c, now - run_retention_ms)).await?;
        let store = self.artifacts.clone();
        let (count, bytes) =
            self.writer.write(move |c, now| maintain::prune_artifacts(c, &store, now - artifact_grace_ms)).await?;
        (report.artifacts, report.artifact_bytes) = (count, bytes);
        Ok(report)
    }

    /// Check integrity: `PRAGMA quick_check`, the SQL oracles (no receipt seen twice, no task
    /// key twice, artifact names, run counters) and artifact bytes against their names — all
    /// of them up to `sample`, else a rotating window of `sample` per call.
    /// A missing file whose row was stored within `recent_ms` is not a violation: its put may
    /// still be writing it.
    pub async fn verify(&self, sample: usize, recent_ms: i64) -> Result<VerifyReport> {
        let store = self.artifacts.clone();
        let cursor: String = self
            .read(|c, _| {
                Ok(c.prepare_cached("SELECT value FROM meta WHERE key = 'verify_cursor'")?
                    .query_row([], |r| r.get(0))
                    .optional()?
                    .unwrap_or_default())
            })
            .await?;
        let (report, next) =
            self.read(move |c, now| maintain::verify(c, &store, sample.max(1), &cursor, now - recent_ms)).await?;
        self.writer
            .write(move |c, _| {
                c.prepare_cached(
                    "INSERT INTO meta(key, value) VALUES ('verify_cursor', ?1)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                )?
                .execute([&next])?;
                Ok(())
            })
            .await?;
        Ok(report)
    }

    /// Checkpoint the WAL into the database and truncate it (`PRAGMA wal_checkpoint(TRUNCATE)`),
    /// then `PRAGMA optimize`. Returns (busy, wal frames, frames checkpointed).
    pub async fn checkpoint_and_optimize(&self) -> Result<(i64, i64, i64)> {
        // Its own read-write connection: the readers are query-only, and the writer's
        // connection is always inside a transaction, where a checkpoint cannot run.
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let c = db::open_connection(&path)?;
            let r = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            c.execute_batch("PRAGMA optimize")?;
            Ok(r)
        })
        .await
        .map_err(|e| LedgerError::Io(format!("checkpoint task failed: {e}")))?
    }

    /// Counts for metrics.
    pub async fn stats(&self) -> Result<Stats> {
        self.read(queries::stats).await
    }

    /// Approve a run's plan (optionally bound to the plan sha256 the approver reviewed).
    ///
    /// This and the other writes that create tasks (finish_compile, append_tasks, retry_run)
    /// are published (publication.rs): their tasks are visible at COMMIT, but a claim hands
    /// one out only once its creation is on disk, so a worker never runs a task that a power
    /// cut could take back.
    pub async fn approve_plan(&self, run_id: &str, approver: &str, plan_sha256: Option<String>) -> Result<RunRecord> {
        let (id, who) = (run_id.to_string(), approver.to_string());
        self.writer
            .write_acked(Ack::Published, move |c, now| runs::approve(c, &id, &who, plan_sha256.as_deref(), now))
            .await
    }

    /// Retry a failed run from its failed step.
    pub async fn retry_run(&self, run_id: &str) -> Result<RunRecord> {
        let id = run_id.to_string();
        self.writer.write_acked(Ack::Published, move |c, now| runs::retry(c, &id, now)).await
    }

    /// Cancel a run that has not finished.
    pub async fn cancel_run(&self, run_id: &str) -> Result<RunRecord> {
        let id = run_id.to_string();
        self.writer.write(move |c, now| runs::cancel(c, &id, now)).await
    }

    /// Claim a queued run for CompileST.
    pub async fn claim_compile(&self, owner: &str, lease_ms: i64) -> Result<Option<CompileJob>> {
        let owner = owner.to_string();
        self.writer.write_acked(Ack::Committed, move |c, now| runs::claim_compile(c, &owner, lease_ms, now)).await
    }

    /// Record CompileST's outcome.
    pub async fn finish_compile(
        &self,
        job: &CompileJob,
        owner: &str,
        outcome: std::result::Result<CompiledPlan, (ErrCode, String)>,
    ) -> Result<RunRecord> {
        let (id, owner, attempt) = (job.run.id.clone(), owner.to_string(), job.compile_attempt);
        let policy = self.retry.clone();
        self.writer
            .write_acked(Ack::Published, move |c, now| {
                runs::finish_compile(c, &id, &owner, attempt, outcome.clone(), &policy, now)
            })
            .await
    }

    /// Add tasks to an executing run; their keys follow the same rule as a plan's.
    pub async fn append_tasks(&self, run_id: &str, specs: Vec<machina_core::TaskSpec>) -> Result<usize> {
        self.writer.append(run_id.to_string(), specs).await
    }

    /// Claim one runnable task under a lease of `lease_ms`. Answered once the claim is
    /// committed, before it is on disk (a claim lost to a power cut loses its holder too).
    pub async fn claim_task(&self, owner: &str, lease_ms: i64) -> Result<Option<ClaimedTask>> {
        let owner = owner.to_string();
        let task =
            self.writer.write_acked(Ack::Committed, move |c, now| tasks::claim(c, &owner, lease_ms, now)).await?;
        if let Some(t) = &task {
            self.published(t).await?;
        }
        Ok(task)
    }

    /// A claimed task may start once its creation is on disk: when nobody has published it
    /// yet, after a sync that began after the claim (see publication.rs).
    async fn published(&self, t: &ClaimedTask) -> Result<()> {
        match t.unpublished {
            Some(seq) => self.writer.barrier(seq).await,
            None => Ok(()),
        }
    }

    /// [`published`](Self::published) for any claimed work.
    async fn work_published(&self, work: Option<Work>) -> Result<Option<Work>> {
        if let Some(Work::Task(t)) = &work {
            self.published(t).await?;
        }
        Ok(work)
    }

    /// Extend a lease; rejected (StaleLease) unless the caller still holds it.
    pub async fn heartbeat(&self, t: &ClaimedTask, owner: &str, lease_ms: i64) -> Result<Heartbeat> {
        let (id, attempt, owner) = (t.task_id, t.attempt, owner.to_string());
        self.writer.write(move |c, now| tasks::heartbeat(c, id, &owner, attempt, lease_ms, now)).await
    }

    /// Commit an attempt's outcome (fenced by owner and attempt).
    pub async fn complete_task(&self, report: TaskReport) -> Result<Completion> {
        let policy = self.retry.clone();
        let jitter = RetryPolicy::random_jitter();
        self.writer.write(move |c, now| tasks::complete(c, &report, &policy, jitter, now)).await
    }

    /// Claim the next piece of work: a queued run to compile first (so new runs are not
    /// starved by long task queues), else a task.
    /// Answered once committed, like [`claim_task`](Self::claim_task).
    pub async fn claim_work(&self, owner: &str, lease_ms: i64) -> Result<Option<Work>> {
        let owner = owner.to_string();
        let work = self.writer.write_acked(Ack::Committed, move |c, now| claim_work(c, &owner, lease_ms, now)).await?;
        self.work_published(work).await
    }

    /// Commit an attempt's outcome and claim the owner's next work in the same
    /// transaction: one group-commit round trip per task instead of two.
    ///
    /// Answered at COMMIT with the next work, so the caller can start it while the disk
    /// syncs; the completion is the [`Pending`] part, final once it is durable.
    pub async fn complete_and_claim(
        &self,
        report: TaskReport,
        lease_ms: i64,
    ) -> Result<(Option<Work>, Pending<Completion>)> {
        let policy = self.retry.clone();
        let jitter = RetryPolicy::random_jitter();
        let (work, done) = self
            .writer
            .write_split(true, move |c, now| {
                let done = tasks::complete(c, &report, &policy, jitter, now)?;
                Ok((claim_work(c, &report.owner, lease_ms, now)?, done))
            })
            .await?;
        // The completion is committed whatever happens to the next claim: keep its answer. A
        // claim whose sync failed (the ledger is poisoned or closing) is not handed out; its
        // lease runs out and the task is reclaimed.
        match self.work_published(work).await {
            Ok(work) => Ok((work, done)),
            Err(e) => {
                tracing::warn!(error = %e, "the next task's creation could not be confirmed on disk: not starting it");
                Ok((None, done))
            }
        }
    }

    /// Give back a claimed task that was not started (shutdown), without using up a retry.
    pub async fn release_task(&self, t: &ClaimedTask, owner: &str) -> Result<()> {
        let (id, attempt, owner) = (t.task_id, t.attempt, owner.to_string());
        self.writer.write(move |c, now| tasks::release(c, id, &owner, attempt, now)).await
    }

    /// Whether anything might be claimable (a cheap read, no write lock): idle workers
    /// ask this before taking the write lock to claim.
    pub async fn has_work(&self) -> Result<bool> {
        self.read(queries::has_work).await
    }

    /// Reclaim expired leases (tasks and compiles); with `owner`, every lease of that owner.
    pub async fn reclaim(&self, owner: Option<&str>) -> Result<usize> {
        let owner = owner.map(str::to_string);
        let policy = self.retry.clone();
        let jitter = RetryPolicy::random_jitter();
        self.writer
            .write(move |c, now| {
                let n = tasks::reclaim(c, owner.as_deref(), &policy, jitter, now)?;
                Ok(n + runs::reclaim_compiles(c, owner.as_deref(), &policy, now)?)
            })
            .await
    }

    /// Store bytes as an artifact (file first, then its row); returns the sha256.
    pub async fn put_artifact(&self, bytes: Vec<u8>, media_type: &str) -> Result<String> {
        // The row is registered (or touched) before the file is written: garbage collection
        // deletes files inside its own write transaction and skips recently touched rows, so
        // it can never remove a file this put relies on.
        let size = bytes.len() as i64;
        let (bytes, sha) = tokio::task::spawn_blocking(move || {
            let sha = ArtifactStore::sha_of(&bytes);
            (bytes, sha)
        })
        .await
        .map_err(|e| LedgerError::Io(format!("artifact hasher failed: {e}")))?;
        let (s, media) = (sha.clone(), media_type.to_string());
        self.writer.write(move |c, now| tasks::register_artifact(c, &s, size, &media, now)).await?;
        let (store, s) = (self.artifacts.clone(), sha.clone());
        tokio::task::spawn_blocking(move || store.put_hashed(&s, &bytes))
            .await
            .map_err(|e| LedgerError::Io(format!("artifact writer failed: {e}")))??;
        Ok(sha)
    }

    /// An artifact's bytes, verified against its name.
    pub async fn get_artifact(&self, sha256: &str) -> Result<Vec<u8>> {
        if !is_sha256_hex(sha256) {
            return Err(LedgerError::not_found("artifact", sha256));
        }
        let sha = sha256.to_string();
        self.read(move |c, _| queries::artifact_known(c, &sha)).await?;
        let store = self.artifacts.clone();
        let sha = sha256.to_string();
        tokio::task::spawn_blocking(move || store.get(&sha))
            .await
            .map_err(|e| LedgerError::Io(format!("artifact reader failed: {e}")))?
    }

    /// How many runs have task counters that disagree with their tasks (must be 0).
    pub async fn counter_drift(&self) -> Result<i64> {
        self.read(|c, _| queries::counter_drift(c)).await
    }

    /// Run arbitrary read-only SQL returning one integer (tests and oracles).
    pub async fn query_i64(&self, sql: &str) -> Result<i64> {
        let sql = sql.to_string();
        self.read(move |c, _| Ok(c.query_row(&sql, [], |r| r.get(0))?)).await
    }
}
