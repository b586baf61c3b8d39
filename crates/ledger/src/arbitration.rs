//! Arbitration: what happens when a run is about to compile while its partition already has
//! an active run. The worker decides (by policy, or by asking the judge); the ledger applies
//! the decision atomically and records it as an `arbitration` event on the run (and an
//! `aborted_by_arbitration` event on every run it cancels).

use machina_core::RunStatus;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use crate::model::{CompileJob, RunRecord};
use crate::runs;
use crate::{Ledger, LedgerError, Result};

/// Statuses of a run that occupies its partition.
const ACTIVE: &str = "('compiling', 'waiting_input', 'executing')";

/// A decision about a run whose partition is busy.
#[derive(Debug, Clone, PartialEq)]
pub enum Arbitration {
    /// Compile it now, beside the active runs.
    Proceed,
    /// Queue it behind this active run: it is compiled only once that one has finished.
    Defer {
        /// The run it waits for.
        behind: String,
    },
    /// Cancel these active runs (their running tasks are stopped and recorded as canceled),
    /// then compile it.
    Abort {
        /// Runs to cancel.
        victims: Vec<String>,
    },
}

/// Active runs of `run`'s partition other than `run`, oldest first — empty when the run's
/// arbitration was already decided.
pub(crate) fn rivals(c: &Connection, run: &RunRecord) -> Result<Vec<RunRecord>> {
    let arbitrated: bool =
        c.prepare_cached("SELECT arbitrated FROM runs WHERE id = ?1")?.query_row([&run.id], |r| r.get(0))?;
    if arbitrated {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = c
        .prepare_cached(&format!(
            "SELECT id FROM runs WHERE partition_key = ?1 AND id != ?2 AND status IN {ACTIVE} ORDER BY id"
        ))?
        .query_map(params![run.queue_partition_key, run.id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.iter().map(|id| runs::load_run(c, id)).collect()
}

/// The claim filter: a run deferred behind one that has not finished is not compiled yet.
pub(crate) const NOT_DEFERRED: &str = "(r.deferred_behind IS NULL OR NOT EXISTS (SELECT 1 FROM runs d
    WHERE d.id = r.deferred_behind AND d.status IN ('queued', 'compiling', 'waiting_input', 'executing')))";

impl Ledger {
    /// Apply `decision` to the run of `job` (whose compile `owner` holds), recording `record`
    /// (policy, reason, model…) in its `arbitration` event. Returns the run; it is still
    /// `compiling` unless deferred (then `queued`).
    pub async fn arbitrate(
        &self,
        job: &CompileJob,
        owner: &str,
        decision: Arbitration,
        record: Value,
    ) -> Result<RunRecord> {
        let (run_id, owner, attempt) = (job.run.id.clone(), owner.to_string(), job.compile_attempt);
        self.writer.write(move |c, now| apply(c, &run_id, &owner, attempt, &decision, &record, now)).await
    }
}

impl Ledger {
    /// Append an event of `kind` to a run (e.g. which model produced its plan).
    pub async fn record_event(&self, run_id: &str, kind: &str, data: Value) -> Result<()> {
        let (id, kind) = (run_id.to_string(), kind.to_string());
        self.writer
            .write(move |c, now| {
                runs::load_run(c, &id)?;
                runs::event(c, &id, &kind, data.clone(), now)
            })
            .await
    }
}

fn apply(
    c: &Connection,
    run_id: &str,
    owner: &str,
    attempt: u32,
    decision: &Arbitration,
    record: &Value,
    now: i64,
) -> Result<RunRecord> {
    let mut run = runs::load_run(c, run_id)?;
    let held: (Option<String>, u32) = c
        .prepare_cached("SELECT lease_owner, compile_attempt FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if run.status != RunStatus::Compiling || held.0.as_deref() != Some(owner) || held.1 != attempt {
        return Err(LedgerError::StaleLease(format!(
            "run {run_id} compile attempt {attempt} is no longer held by {owner}"
        )));
    }
    match decision {
        Arbitration::Proceed => {
            c.prepare_cached("UPDATE runs SET arbitrated = 1, deferred_behind = NULL WHERE id = ?1")?
                .execute([run_id])?;
        }
        Arbitration::Abort { victims } => {
            for v in victims {
                let victim = runs::load_run(c, v)?;
                if victim.status.is_terminal() {
                    continue; // finished meanwhile: nothing to abort
                }
                runs::cancel(c, v, now)?;
                runs::event(c, v, "aborted_by_arbitration", json!({"by": run_id, "reason": record["reason"]}), now)?;
            }
            c.prepare_cached("UPDATE runs SET arbitrated = 1, deferred_behind = NULL WHERE id = ?1")?
                .execute([run_id])?;
        }
        Arbitration::Defer { behind } => {
            // Two runs claimed at once could each defer behind the other and wait forever:
            // defer only behind a run that is still active now, else go on compiling.
            let still_active: Option<String> = c
                .prepare_cached(&format!(
                    "SELECT id FROM runs WHERE partition_key = ?1 AND id != ?2 AND status IN {ACTIVE}
                     ORDER BY (id = ?3) DESC, id DESC LIMIT 1"
                ))?
                .query_row(params![run.queue_partition_key, run_id, behind], |r| r.get(0))
                .optional()?;
            let Some(behind) = still_active else {
                let mut record = record.clone();
                record["reason"] = json!(format!(
                    "{}; but no run of the partition is active any more: compiled now",
                    record["reason"].as_str().unwrap_or("")
                ));
                return apply(c, run_id, owner, attempt, &Arbitration::Proceed, &record, now);
            };
            let decision = Arbitration::Defer { behind: behind.clone() };
            // Back to the queue without spending a compile attempt.
            c.prepare_cached(
                "UPDATE runs SET deferred_behind = ?2, lease_owner = NULL, lease_expires_at = NULL,
                 compile_budget_base = compile_budget_base + 1 WHERE id = ?1",
            )?
            .execute(params![run_id, behind])?;
            runs::transition(c, &mut run, RunStatus::Queued, now)?;
            return finish(c, run_id, &decision, record, now);
        }
    }
    finish(c, run_id, decision, record, now)
}

fn finish(c: &Connection, run_id: &str, decision: &Arbitration, record: &Value, now: i64) -> Result<RunRecord> {
    let mut record = record.clone();
    if let Value::Object(m) = &mut record {
        m.insert("decision".into(), json!(decision_name(decision)));
        match decision {
            Arbitration::Defer { behind } => m.insert("behind".into(), json!(behind)),
            Arbitration::Abort { victims } => m.insert("aborted".into(), json!(victims)),
            Arbitration::Proceed => None,
        };
    }
    runs::event(c, run_id, "arbitration", record, now)?;
    runs::load_run(c, run_id)
}

/// The decision's name in events: `parallel`, `defer` or `abort`.
pub fn decision_name(d: &Arbitration) -> &'static str {
    match d {
        Arbitration::Proceed => "parallel",
        Arbitration::Defer { .. } => "defer",
        Arbitration::Abort { .. } => "abort",
    }
}
