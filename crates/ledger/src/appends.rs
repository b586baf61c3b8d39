//! Appends of tasks to a run, merged when several meet in one group commit.
//!
//! Many clients adding tasks to the same run at once (a fan-out fed by several producers,
//! `POST` bursts, the benchmark's 64 submitters) would each read the run, update its
//! counters and write a `tasks_queued` event. Merged, the appends to one run in a batch do
//! that once, and insert their tasks in one go, in the order the jobs arrived. If the merged
//! append fails (a duplicate task key, a run that stopped executing), the writer runs the
//! batch again job by job, each in its own savepoint, so every client gets its own answer.
//!
//! The writer thread is the one thing every write waits for, so a client encodes its own
//! tasks' rows (key and spec JSON) before sending them, once it knows the run's intent: the
//! writer's answer to its first append tells it, and the writer recomputes rows that assumed
//! another intent, so a wrong guess costs time, never a wrong key.

use machina_core::TaskSpec;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{LedgerError, Result};
use crate::jobs::{error_of, keep, outcome};
use crate::runs::{self, Append, Encoded};
use crate::sync::{Held, HeldValue};
use crate::task_rows::TaskRow;
use crate::writer::{Job, Reply};

/// Runs whose intent a process remembers, at most; past it, it forgets them all.
const RUN_INTENTS_MAX: usize = 1024;
/// Tasks a client encodes on its own async task; more go to a blocking thread.
const ENCODE_INLINE_MAX_TASKS: usize = 64;

/// What an append added, and the run's intent if the client did not encode for it.
pub(crate) struct Added {
    pub(crate) count: usize,
    pub(crate) intent_id: Option<String>,
    /// The append's specs and rows, handed back so that the client frees them and not the
    /// writer thread (freeing another thread's allocations is not cheap with glibc).
    pub(crate) spent: Option<(Vec<TaskSpec>, Option<Encoded>)>,
}

/// One client's append (answered like [`Ack::Published`](crate::writer::Ack) writes).
pub(crate) struct AppendJob {
    pub(crate) run_id: String,
    pub(crate) specs: Vec<TaskSpec>,
    pub(crate) encoded: Option<Encoded>,
    pub(crate) result: Option<Result<Added>>,
    pub(crate) reply: Reply<Added>,
}

impl AppendJob {
    fn append(&self) -> Append<'_> {
        Append { specs: &self.specs, encoded: self.encoded.as_ref() }
    }
}

/// The intent of each run this process appended to (a run's intent never changes).
#[derive(Default)]
pub(crate) struct RunIntents(Mutex<HashMap<String, String>>);

impl RunIntents {
    fn get(&self, run_id: &str) -> Option<String> {
        // A cache: a panic elsewhere while it was locked leaves nothing half-done in it.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).cloned()
    }

    pub(crate) fn learn(&self, run_id: &str, intent_id: String) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= RUN_INTENTS_MAX {
            map.clear();
        }
        map.insert(run_id.to_string(), intent_id);
    }

    /// Encode `specs`' rows for `run_id` if its intent is known, off the writer thread.
    pub(crate) async fn encode(&self, run_id: &str, specs: Vec<TaskSpec>) -> Result<(Vec<TaskSpec>, Option<Encoded>)> {
        let Some(intent_id) = self.get(run_id) else {
            return Ok((specs, None));
        };
        let encode = |intent_id: String, run_id: &str, specs: &[TaskSpec]| -> Result<Encoded> {
            let rows = specs.iter().map(|s| TaskRow::encode(&intent_id, run_id, s)).collect::<Result<_>>()?;
            Ok(Encoded { intent_id, rows })
        };
        if specs.len() <= ENCODE_INLINE_MAX_TASKS {
            let encoded = encode(intent_id, run_id, &specs)?;
            return Ok((specs, Some(encoded)));
        }
        let run_id = run_id.to_string();
        tokio::task::spawn_blocking(move || {
            let encoded = encode(intent_id, &run_id, &specs)?;
            Ok((specs, Some(encoded)))
        })
        .await
        .map_err(|e| LedgerError::Db(format!("encoding tasks failed: {e}")))?
    }
}

impl Job for AppendJob {
    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        let added = runs::append_tasks(conn, &self.run_id, &[self.append()], now).map(|a| Added {
            count: a.counts[0],
            intent_id: a.intent_id,
            spent: None,
        });
        keep(added, &mut self.result)
    }

    fn committed(self: Box<Self>, commit_err: Option<&LedgerError>) -> Option<Box<dyn Held>> {
        let this = *self;
        match outcome(commit_err, this.result) {
            Ok(mut value) => {
                value.spent = Some((this.specs, this.encoded));
                Some(Box::new(HeldValue { value, reply: this.reply }))
            }
            Err(e) => {
                this.reply.send(Err(e));
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
        let appends: Vec<Append<'_>> = jobs.iter().map(|a| a.append()).collect();
        match runs::append_tasks(conn, &run_id, &appends, now) {
            Ok(added) => jobs.into_iter().zip(added.counts).for_each(|(a, count)| {
                a.result = Some(Ok(Added { count, intent_id: added.intent_id.clone(), spent: None }))
            }),
            Err(e) => {
                any_failed = true;
                jobs.into_iter().for_each(|a| a.result = Some(Err(e.clone())));
            }
        }
    }
    any_failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use machina_core::{Step, task_key};

    fn spec(name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            tool: "shell".into(),
            argv: vec!["/usr/bin/true".into()],
            timeout_secs: 5,
            lease: None,
        }
    }

    /// A migrated ledger with one executing run `r1` of intent `i1`.
    fn ledger(dir: &std::path::Path) -> Connection {
        let path = dir.join("ledger.db");
        let mut c = crate::db::open_connection(&path).unwrap();
        crate::db::migrate(&mut c, &path, "test").unwrap();
        c.execute_batch(
            "INSERT INTO intents VALUES ('i1', 'goal', '{}', '{}', 1);
             INSERT INTO partitions(key) VALUES ('p');
             INSERT INTO runs(id, intent_id, recipe, partition_key, workload, concurrency, status, created_at, updated_at, num)
                 VALUES ('r1', 'i1', 'demo', 'p', '{}', 1, 'executing', 1, 1, 1);",
        )
        .unwrap();
        c
    }

    fn encoded(intent_id: &str, specs: &[TaskSpec]) -> Encoded {
        let rows = specs.iter().map(|s| TaskRow::encode(intent_id, "r1", s).unwrap()).collect();
        Encoded { intent_id: intent_id.into(), rows }
    }

    fn stored_keys(c: &Connection) -> Vec<String> {
        let mut stmt = c.prepare("SELECT lower(hex(task_key)) FROM tasks ORDER BY idx").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<rusqlite::Result<_>>().unwrap()
    }

    #[test]
    fn rows_a_client_encoded_for_another_intent_are_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let c = ledger(dir.path());
        // As on the writer thread: tasks are inserted inside a write transaction.
        c.execute_batch("BEGIN IMMEDIATE").unwrap();
        let (right, stale) = ([spec("a")], [spec("b"), spec("c")]);
        let (good, wrong) = (encoded("i1", &right), encoded("i-other", &stale));
        let appends = [
            Append { specs: &right, encoded: Some(&good) },
            Append { specs: &stale, encoded: Some(&wrong) },
            Append { specs: &[spec("d")], encoded: None },
        ];
        let added = runs::append_tasks(&c, "r1", &appends, 1).unwrap();
        assert_eq!(added.counts, vec![1, 2, 1]);
        assert_eq!(added.intent_id.as_deref(), Some("i1"), "told, since some rows were not usable");
        let expected: Vec<String> =
            ["a", "b", "c", "d"].iter().map(|n| task_key("i1", "r1", Step::Execute, &spec(n))).collect();
        assert_eq!(stored_keys(&c), expected);
        // Rows encoded for the right intent are used as they are, and nothing is told back.
        let more = [spec("e")];
        let rows = encoded("i1", &more);
        let added = runs::append_tasks(&c, "r1", &[Append { specs: &more, encoded: Some(&rows) }], 1).unwrap();
        assert_eq!(added.intent_id, None);
        assert_eq!(stored_keys(&c).last(), Some(&task_key("i1", "r1", Step::Execute, &more[0])));
    }
}
