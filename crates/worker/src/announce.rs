//! What a worker tells the world when runs move: D-Bus signals (hints for
//! watchers and other workers) and the journal's MESSAGE_ID events.

use machina_bus::signals;
use machina_core::log::{MSG_APPROVAL_REQUIRED, MSG_LEASE_RECLAIMED, MSG_RUN_FINISHED, MSG_TASK_FAILED};
use machina_core::{RunStatus, TaskStatus};
use machina_ledger::{Completion, RunRecord};

/// The worker's bus connection, if any; every method is best effort.
#[derive(Clone, Default)]
pub struct Announcer {
    bus: Option<zbus::Connection>,
}

impl Announcer {
    /// Announce on `bus` (`None`: journal only).
    pub fn new(bus: Option<zbus::Connection>) -> Self {
        Self { bus }
    }

    /// This worker claimed a run for compiling.
    pub async fn compiling(&self, run_id: &str) {
        self.state(run_id, RunStatus::Compiling).await;
    }

    /// A compile finished: the run is at the gate, executing, or failed.
    pub async fn compiled(&self, run: &RunRecord) {
        match run.status {
            RunStatus::WaitingInput => {
                let sha = run.plan_sha256.as_deref().unwrap_or("");
                tracing::info!(message_id = MSG_APPROVAL_REQUIRED, run_id = %run.id, plan_sha256 = sha,
                    "run {} waits for approval of plan {sha}", run.id);
                if let Some(bus) = &self.bus {
                    let _ = signals::approval_required(bus, &run.id, sha).await;
                }
            }
            RunStatus::Executing => {
                if let Some(bus) = &self.bus {
                    let _ = signals::tasks_queued(bus, &run.id, 0).await;
                }
            }
            s if s.is_terminal() => finished(run),
            _ => {}
        }
        self.state(&run.id, run.status).await;
    }

    /// A run changed state outside a compile or task commit (e.g. canceled by arbitration).
    pub async fn state_changed(&self, run: &RunRecord) {
        if run.status.is_terminal() {
            finished(run);
        }
        self.state(&run.id, run.status).await;
    }

    /// A task attempt was committed.
    pub async fn task_done(&self, run_id: &str, task_key: &str, err_code: &str, done: &Completion) {
        if done.task_status == TaskStatus::Failed || !err_code.is_empty() {
            tracing::warn!(message_id = MSG_TASK_FAILED, run_id, task_key, err_code,
                task_status = %done.task_status, "task {task_key} failed with {err_code}");
        }
        if done.run_status.is_terminal() {
            tracing::info!(message_id = MSG_RUN_FINISHED, run_id, run_status = %done.run_status,
                "run {run_id} finished: {}", done.run_status);
            self.state(run_id, done.run_status).await;
        }
    }

    async fn state(&self, run_id: &str, status: RunStatus) {
        if let Some(bus) = &self.bus
            && let Err(e) = signals::run_state_changed(bus, run_id, status.as_str()).await
        {
            tracing::debug!(run_id, "cannot emit RunStateChanged: {e}");
        }
    }
}

/// Log a run that a compile ended.
fn finished(run: &RunRecord) {
    tracing::info!(message_id = MSG_RUN_FINISHED, run_id = %run.id, run_status = %run.status,
        err_code = run.err_code.as_deref().unwrap_or(""), "run {} finished: {}", run.id, run.status);
}

/// Log leases taken back (by `owner` at its start, or anyone's once expired).
pub fn reclaimed(worker: &str, count: usize, own: bool) {
    if count > 0 {
        tracing::warn!(
            message_id = MSG_LEASE_RECLAIMED,
            worker,
            reclaimed = count,
            own,
            "reclaimed {count} expired lease(s){}",
            if own { " left by a previous run of this worker" } else { "" }
        );
    }
}
