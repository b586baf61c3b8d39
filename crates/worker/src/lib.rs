//! machina-worker: claims work from the ledger and runs it.
//!
//! Each slot of a worker loops: reclaim expired leases, claim a queued run for
//! CompileST (render its plan from the recipe) or a task (run its tool under a
//! lease, heartbeating), commit the outcome, and when there is nothing to do,
//! wait for the fallback poll or shutdown. Shutdown stops claiming and lets
//! in-flight tasks finish.

pub mod announce;
mod arbitrate;
pub mod daemon;
mod planning;
pub mod plugin;
pub mod presence;
pub mod shell;
pub mod tools;

use machina_core::config::Settings;
use machina_core::recipe::Workload;
use machina_core::{ErrCode, RecipeBook};
use machina_ledger::{ClaimedTask, CompileJob, CompiledPlan, Heartbeat, Ledger, LedgerError, TaskReport, Work};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::announce::Announcer;
use crate::tools::Toolbox;
use machina_planner::driver::Driver;
use machina_planner::llm::Judge;

/// A worker process's shared parts.
#[derive(Clone)]
pub struct Worker {
    /// Lease owner name (the systemd instance name).
    pub id: String,
    ledger: Ledger,
    recipes: Arc<RecipeBook>,
    settings: Arc<Settings>,
    tools: Arc<Toolbox>,
    announce: Announcer,
    bus: Option<zbus::Connection>,
    /// Idle slots wait on this besides the poll; TasksQueued signals and local fan-outs fire it.
    wake: Arc<tokio::sync::Notify>,
    /// Fired when some run was canceled: running slots check their lease at once.
    cancels: Arc<tokio::sync::Notify>,
    /// The LLM judge (plans from models, arbitration), when `[judge]` configures one.
    judge: Option<Arc<Judge>>,
    /// The external policy driver, when `[driver]` configures one.
    driver: Option<Arc<Driver>>,
    /// Completions committed and waiting for the disk while their slot runs its next work.
    settling: TaskTracker,
}

impl Worker {
    /// A worker named `id`.
    pub fn new(id: String, ledger: Ledger, recipes: RecipeBook, settings: Settings) -> Self {
        let tools = Arc::new(Toolbox::new(&settings));
        let (judge, driver) = planners(&settings);
        Self {
            id,
            ledger,
            recipes: Arc::new(recipes),
            settings: Arc::new(settings),
            tools,
            announce: Announcer::default(),
            bus: None,
            wake: Arc::new(tokio::sync::Notify::new()),
            cancels: Arc::new(tokio::sync::Notify::new()),
            judge,
            driver,
            settling: TaskTracker::new(),
        }
    }

    /// Listen for TasksQueued and send signals on `bus`.
    pub fn with_bus(mut self, bus: zbus::Connection) -> Self {
        self.announce = Announcer::new(Some(bus.clone()));
        self.bus = Some(bus);
        self
    }

    fn lease_ms(&self) -> i64 {
        (self.settings.worker.lease_secs * 1000) as i64
    }

    /// Run `slots` loops until `shutdown`, then wait for in-flight work.
    pub async fn run(self, slots: usize, shutdown: CancellationToken) -> Result<(), LedgerError> {
        // A restarted worker's old leases are certainly stale: reclaim them now, not at expiry.
        let n = self.ledger.reclaim(Some(&self.id)).await?;
        announce::reclaimed(&self.id, n, true);
        // The task spawner is started before the first task, so it costs that task nothing.
        self.tools.shell().start_spawner().await;
        let tracker = TaskTracker::new();
        // Check-in and the signal listener outlive the slots by a moment: stopped once they drain.
        let background = CancellationToken::new();
        tracker.spawn(presence::check_in(self.ledger.clone(), self.id.clone(), background.clone()));
        if let Some(bus) = self.bus.clone() {
            tracker.spawn(presence::listen_for_work(bus.clone(), self.wake.clone(), background.clone()));
            tracker.spawn(presence::listen_for_cancels(bus, self.cancels.clone(), background.clone()));
        }
        let slots_tracker = TaskTracker::new();
        for slot in 0..slots.max(1) {
            let (w, stop) = (self.clone(), shutdown.clone());
            slots_tracker.spawn(async move { w.slot_loop(slot, stop).await });
        }
        slots_tracker.close();
        slots_tracker.wait().await;
        self.settling.close();
        self.settling.wait().await;
        background.cancel();
        tracker.close();
        tracker.wait().await;
        if let Some(e) = self.ledger.poisoned() {
            return Err(e);
        }
        tracing::info!(worker = %self.id, "worker drained");
        Ok(())
    }

    async fn slot_loop(&self, slot: usize, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.settings.worker.poll_ms);
        // Work claimed together with the last commit, and when that claim was asked for
        // (the lease runs from then, as far as this process can vouch).
        let mut next: Option<(Work, Instant)> = None;
        // After a TasksQueued wake-up there is work by definition: claim at once, without the
        // cheap read and the reclaim (expired leases depend on time, not on the signal; the
        // poll tick takes care of them).
        let mut signalled = false;
        while !shutdown.is_cancelled() {
            // Another slot's write found the disk refusing a sync: stop too, idle or not.
            if self.ledger.poisoned().is_some() {
                break;
            }
            // Armed before looking for work, so a wake-up between the look and the wait is kept.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let asked = Instant::now();
            let result = match next.take() {
                Some((work, claimed)) => self.perform(work, claimed).await,
                None if std::mem::take(&mut signalled) => self.claim().await,
                None => self.find_work().await,
            };
            match result {
                Ok(Some(work)) => {
                    next = Some((work, asked));
                    continue;
                }
                Ok(None) => {}
                Err(e) if e.is_fatal() => {
                    tracing::error!(worker = %self.id, slot, error = %e, "the ledger can take no more writes: stopping");
                    break;
                }
                Err(e) => tracing::warn!(worker = %self.id, slot, error = %e, kind = %e.kind(), "worker step failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = &mut woken => signalled = true,
                _ = shutdown.cancelled() => {}
            }
        }
        // Work claimed with the last commit but not started: a task goes back to the
        // queue; a compile is quick, so it is finished.
        let result = match next.map(|(work, _)| work) {
            Some(Work::Task(t)) => self.ledger.release_task(&t, &self.id).await,
            Some(Work::Compile(job)) => self.compile(*job).await,
            None => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(worker = %self.id, slot, error = %e, "handing back claimed work at shutdown failed");
        }
    }

    /// Reclaim expired leases and claim work, taking the write lock only when the
    /// cheap read says there may be something to do.
    async fn find_work(&self) -> Result<Option<Work>, LedgerError> {
        if !self.ledger.has_work().await? {
            return Ok(None);
        }
        let n = self.ledger.reclaim(None).await?;
        announce::reclaimed(&self.id, n, false);
        self.claim().await
    }

    /// Claim a compile or a task (announcing a compile claim).
    async fn claim(&self) -> Result<Option<Work>, LedgerError> {
        let work = self.ledger.claim_work(&self.id, self.lease_ms()).await?;
        if let Some(Work::Compile(job)) = &work {
            self.announce.compiling(&job.run.id).await;
        }
        Ok(work)
    }

    /// Do one piece of work; returns the next one when it was claimed with the commit.
    async fn perform(&self, work: Work, claimed: Instant) -> Result<Option<Work>, LedgerError> {
        match work {
            Work::Compile(job) => {
                self.compile(*job).await?;
                Ok(None)
            }
            Work::Task(task) => self.execute(task, claimed).await,
        }
    }

    async fn compile(&self, job: CompileJob) -> Result<(), LedgerError> {
        let span = tracing::info_span!("compile", run_id = %job.run.id, step = "CompileST", worker = %self.id);
        tracing::Instrument::instrument(self.compile_in_span(job), span).await
    }

    async fn compile_in_span(&self, job: CompileJob) -> Result<(), LedgerError> {
        if !self.arbitrate(&job).await? {
            tracing::info!("deferred behind an active run of its partition");
            self.announce.state_changed(&self.ledger.run_detail(&job.run.id).await?.run).await;
            return Ok(());
        }
        let outcome = self.render(&job).await;
        if let Err((code, msg)) = &outcome {
            tracing::warn!(err_code = %code, "compile failed: {msg}");
        }
        let run = self.ledger.finish_compile(&job, &self.id, outcome).await?;
        tracing::info!(status = %run.status, "CompileST done");
        if run.status == machina_core::RunStatus::Executing {
            // Other idle slots of this process need no signal round trip.
            self.wake.notify_waiters();
        }
        self.announce.compiled(&run).await;
        Ok(())
    }

    async fn render(&self, job: &CompileJob) -> Result<CompiledPlan, (ErrCode, String)> {
        let invalid = |m: String| (ErrCode::PlanInvalid, m);
        let recipe = self
            .recipes
            .get(&job.run.recipe)
            .ok_or_else(|| invalid(format!("recipe {:?} is not known to worker {}", job.run.recipe, self.id)))?;
        let workload: Workload =
            serde_json::from_value(job.run.workload.clone()).map_err(|e| invalid(format!("workload: {e}")))?;
        let plan = self.plan_for(recipe, job, &workload).await?;
        let sha = self
            .ledger
            .put_artifact(plan.canonical_bytes(), "application/json")
            .await
            .map_err(|e| (ErrCode::BootFail, format!("storing the plan: {e}")))?;
        Ok(CompiledPlan { plan, plan_sha256: sha, approval_required: recipe.approval_required })
    }

    async fn execute(&self, task: ClaimedTask, claimed: Instant) -> Result<Option<Work>, LedgerError> {
        let span = tracing::info_span!("task", run_id = %task.run_id, task_key = %task.task_key,
            attempt = task.attempt, step = "ExecuteST", worker = %self.id);
        tracing::Instrument::instrument(self.execute_in_span(task, claimed), span).await
    }

    async fn execute_in_span(&self, task: ClaimedTask, claimed: Instant) -> Result<Option<Work>, LedgerError> {
        // One directory per attempt: a stale attempt still being killed never shares it with the live one.
        let dir = self.settings.state_dir.join("tasks").join(&task.task_key).join(task.attempt.to_string());
        let prepared = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || prepare_dir(&dir)).await.map_err(io_join)?
        };
        let (outcome, lease_deadline) = match prepared {
            Err(e) => (
                shell::ShellOutcome {
                    err_code: Some(ErrCode::BootFail),
                    exit_status: None,
                    stdout: Vec::new(),
                    stderr: format!("cannot prepare task directory {}: {e}", dir.display()).into_bytes(),
                    wall_ms: 0,
                },
                claimed + self.lease(),
            ),
            Ok(()) => match self.run_with_heartbeat(&task, &dir, claimed).await {
                Some(done) => done,
                None => {
                    remove_attempt_dir(dir).await;
                    return Ok(None); // lease lost: the new holder commits, not us
                }
            },
        };
        remove_attempt_dir(dir).await;
        let code = outcome.err_code.map(|c| c.as_str()).unwrap_or("");
        let commit = || async {
            let stdout = self.ledger.put_artifact(outcome.stdout.clone(), "text/plain").await?;
            let stderr = self.ledger.put_artifact(outcome.stderr.clone(), "text/plain").await?;
            let report = TaskReport {
                task_id: task.task_id,
                owner: self.id.clone(),
                attempt: task.attempt,
                err_code: outcome.err_code,
                exit_status: outcome.exit_status,
                stdout_sha256: Some(stdout),
                stderr_sha256: Some(stderr),
                wall_ms: outcome.wall_ms,
            };
            self.ledger.complete_and_claim(report, self.lease_ms()).await
        };
        match retry_while_unavailable(lease_deadline, commit).await {
            Ok((next, done)) => {
                // Committed: the slot goes on with its next work while the disk confirms this.
                let (announce, code) = (self.announce.clone(), code.to_string());
                let settled = async move {
                    match done.await {
                        Ok(done) => {
                            tracing::info!(err_code = code, task_status = %done.task_status,
                                run_status = %done.run_status, "task committed");
                            announce.task_done(&task.run_id, &task.task_key, &code, &done).await;
                        }
                        Err(e) => tracing::error!(error = %e, "the task's commit did not reach the disk"),
                    }
                };
                self.settling.spawn(tracing::Instrument::in_current_span(settled));
                Ok(next)
            }
            Err(LedgerError::StaleLease(m)) => {
                tracing::warn!("result discarded, lease lost: {m}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms() as u64)
    }

    /// Run the task's tool, renewing the lease. Returns the outcome and the local deadline of
    /// the lease, or None if the lease was lost (refused, or not renewed before it ran out).
    async fn run_with_heartbeat(
        &self,
        task: &ClaimedTask,
        dir: &std::path::Path,
        claimed: Instant,
    ) -> Option<(shell::ShellOutcome, Instant)> {
        let cancel = CancellationToken::new();
        let run = self.tools.run(&self.ledger, task, dir, self.settings.worker.output_cap_bytes, cancel.clone());
        tokio::pin!(run);
        // The lease as this process can vouch for it: counted from before each renewal was sent.
        let mut lease_deadline = claimed + self.lease();
        let mut beat = tokio::time::interval(self.lease() / 3);
        beat.tick().await;
        let mut lost = false;
        // The renewal in flight, polled beside the task and the lease deadline, so neither a
        // slow ledger nor the task's own timeout waits for the other.
        type Renewal<'a> =
            std::pin::Pin<Box<dyn std::future::Future<Output = Result<Heartbeat, LedgerError>> + Send + 'a>>;
        let mut renewal: Option<(Renewal<'_>, Instant)> = None;
        loop {
            tokio::select! {
                out = &mut run => return (!lost).then_some((out, lease_deadline)),
                _ = tokio::time::sleep_until(lease_deadline.into()), if !lost => {
                    tracing::warn!("lease ran out without a renewal (ledger unavailable?), killing the task");
                    lost = true;
                    cancel.cancel();
                }
                _ = self.cancels.notified(), if !lost && renewal.is_none() => {
                    renewal = Some((Box::pin(self.ledger.heartbeat(task, &self.id, self.lease_ms())), Instant::now()));
                }
                _ = beat.tick(), if !lost && renewal.is_none() => {
                    renewal = Some((Box::pin(self.ledger.heartbeat(task, &self.id, self.lease_ms())), Instant::now()));
                }
                r = async { renewal.as_mut().expect("guarded").0.as_mut().await }, if renewal.is_some() => {
                    let sent = renewal.take().expect("guarded").1;
                    match r {
                        Ok(Heartbeat::Renewed) if !lost => lease_deadline = sent + self.lease(),
                        Ok(Heartbeat::Renewed) => {}
                        Ok(Heartbeat::Canceled) => cancel.cancel(),
                        Err(LedgerError::StaleLease(m)) => {
                            tracing::warn!("lease lost, killing the task: {m}");
                            lost = true;
                            cancel.cancel();
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed; will retry"),
                    }
                }
            }
        }
    }
}

/// The judge and the policy driver the settings configure (each logged when unusable: a
/// recipe that needs it then fails its compile with a clear error, nothing else is affected).
fn planners(settings: &Settings) -> (Option<Arc<Judge>>, Option<Arc<Driver>>) {
    let creds = settings.judge.credentials_dirs(std::env::var("CREDENTIALS_DIRECTORY").ok().as_deref());
    let fixtures = settings.judge.fixtures_dir(&settings.state_dir);
    let judge = match Judge::new(&settings.judge, creds, fixtures) {
        Ok(j) if j.is_configured() => Some(Arc::new(j)),
        Ok(_) => None,
        Err(e) => {
            tracing::error!(error = %e, "the judge is unusable; recipes planned by an LLM and judge arbitration will fail");
            None
        }
    };
    let base = machina_sandbox::Rlimits {
        cpu_secs: settings.sandbox.cpu_secs,
        address_space_bytes: settings.sandbox.address_space_bytes,
        file_size_bytes: settings.sandbox.file_size_bytes,
        open_files: settings.sandbox.open_files,
        processes: settings.sandbox.processes,
    };
    let driver = match Driver::new(&settings.driver, shell::locate_wrapper(), settings.sandbox.required) {
        Ok(d) => d.map(|d| Arc::new(d.with_base_rlimits(base))),
        Err(e) => {
            tracing::error!(error = %e, "the policy driver is unusable; recipes planned by it will fail");
            None
        }
    };
    (judge, driver)
}

/// Run `op` again while the ledger is unavailable (locked by another process, disk full),
/// with capped backoff, until `deadline`; any other outcome is returned at once.
async fn retry_while_unavailable<T, F, Fut>(deadline: Instant, op: F) -> Result<T, LedgerError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, LedgerError>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match op().await {
            Err(e)
                if e.kind() == machina_core::ErrorKind::Unavailable
                    && !e.is_fatal()
                    && Instant::now() + pause < deadline =>
            {
                tracing::warn!(error = %e, "ledger unavailable; retrying the commit");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

fn io_join(e: tokio::task::JoinError) -> LedgerError {
    LedgerError::Io(format!("task directory worker failed: {e}"))
}

fn prepare_dir(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

/// Remove an attempt's directory (and its task's, once empty) off the async threads.
async fn remove_attempt_dir(dir: PathBuf) {
    let removed = tokio::task::spawn_blocking(move || {
        std::fs::remove_dir_all(&dir)?;
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent); // fails while another attempt's directory exists
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = removed {
        tracing::warn!(error = %e, "could not remove a task directory");
    }
}
