//! Appends of tasks to a run, merged when several meet in one group commit.
//!
//! Many clients adding tasks to the same run at once (a fan-out fed by several producers,
//! `POST` bursts, the benchmark's 64 submitters) would each read the run, update its
//! counters and write a `tasks_queued` event. Merged, the appends to one run in a batch do
//! that once, and insert their tasks in one go, in the order the jobs arrived. If the merged
//! append fails (a duplicate task key, a run that stopped executing), the writer runs the
//! batch again job by job, each in its own savepoint, so every client gets its own answer.

use machina_core::TaskSpec;
use rusqlite::Connection;

use crate::error::{LedgerError, Result};
use crate::jobs::{error_of, keep, outcome};
use crate::runs;
use crate::sync::{Held, HeldValue};
use crate::writer::{Job, Reply};

/// One client's append (answered like [`Ack::Published`](crate::writer::Ack) writes).
pub(crate) struct AppendJob {
    pub(crate) run_id: String,
    pub(crate) specs: Vec<TaskSpec>,
    pub(crate) result: Option<Result<usize>>,
    pub(crate) reply: Reply<usize>,
}

impl Job for AppendJob {
    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        let added = runs::append_tasks(conn, &self.run_id, &[&self.specs], now).map(|counts| counts[0]);
        keep(added, &mut self.result)
    }

    fn committed(self: Box<Self>, commit_err: Option<&LedgerError>) -> Option<Box<dyn Held>> {
        match outcome(commit_err, self.result) {
            Ok(value) => Some(Box::new(HeldValue { value, reply: self.reply })),
            Err(e) => {
                self.reply.send(Err(e));
                None
            }
        }
    }

    fn early(&self) -> bool {
        false
    }

    fn published(&self) -> bool {
        true
    }

    fn fail(self: Box<Self>, err: LedgerError) {
        self.reply.send(Err(err));
    }

    fn error(&self) -> Option<LedgerError> {
        error_of(&self.result)
    }

    fn append_to(&mut self) -> Option<&mut AppendJob> {
        Some(self)
    }
}

/// Run a batch's jobs, merging the appends to each run into one; returns whether any failed.
/// A failed merged append fails all of its jobs (the writer then re-runs them one by one).
pub(crate) fn run_merged(conn: &Connection, batch: &mut [Box<dyn Job>], now: i64) -> bool {
    let mut any_failed = false;
    let mut done = vec![false; batch.len()];
    for i in 0..batch.len() {
        if done[i] {
            continue;
        }
        // SQLite rolled the whole transaction back (disk full, I/O error): run nothing more,
        // or it would commit on its own, outside this batch (the writer aborts the batch).
        if any_failed && conn.is_autocommit() {
            break;
        }
        let Some(run_id) = batch[i].append_to().map(|a| a.run_id.clone()) else {
            any_failed |= batch[i].run(conn, now);
            continue;
        };
        // This append and the later ones to the same run, in arrival order.
        let mut jobs: Vec<&mut AppendJob> = Vec::new();
        for (job, seen) in batch.iter_mut().zip(done.iter_mut()).skip(i) {
            if !*seen
                && let Some(a) = job.append_to()
                && a.run_id == run_id
            {
                *seen = true;
                jobs.push(a);
            }
        }
        if let [lone] = jobs.as_mut_slice() {
            any_failed |= lone.run(conn, now);
            continue;
        }
        let specs: Vec<&[TaskSpec]> = jobs.iter().map(|a| a.specs.as_slice()).collect();
        match runs::append_tasks(conn, &run_id, &specs, now) {
            Ok(counts) => jobs.into_iter().zip(counts).for_each(|(a, n)| a.result = Some(Ok(n))),
            Err(e) => {
                any_failed = true;
                jobs.into_iter().for_each(|a| a.result = Some(Err(e.clone())));
            }
        }
    }
    any_failed
}
