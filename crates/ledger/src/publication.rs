//! Publication: no task starts before the commit that created it is on disk.
//!
//! A batch that creates or requeues tasks (an [`Ack::Published`](crate::writer::Ack) job)
//! raises `publication.staged_seq` and stamps its tasks with it (`tasks.pub_seq`); its
//! clients are answered once an `fdatasync` of the WAL that began after its COMMIT has
//! returned, like any durable write, and the writer never waits for the disk itself. The
//! sequence then counts as durable, and the writer's next transaction raises
//! `publication.durable_seq` to it (a statement in a transaction it runs anyway).
//!
//! A claim that takes a task with `pub_seq > durable_seq` (published by nobody yet: its
//! creator is still syncing, went idle before its next transaction, or died) is handed back
//! only after a sync that began after the claim's own COMMIT, which covers the task's
//! creation too (the WAL is ordered, and one sync covers every commit before it, whoever
//! wrote them). So a worker never runs a task that a power cut could take back.
//!
//! Raising `durable_seq` needs no sync of its own: after a power cut, every task still in the
//! file is on disk, and opening the ledger publishes it ([`repair_at_open`]).

use rusqlite::Connection;
use std::sync::Mutex;

use crate::db::Durability;
use crate::error::{LedgerError, Result};
use crate::sync::{Held, WalFile};

/// The highest staged sequence known to be on disk and not yet published.
#[derive(Default)]
pub(crate) struct Publisher(Mutex<i64>);

impl Publisher {
    /// Tasks staged up to `seq` are on disk: publish them with the next transaction.
    pub(crate) fn durable(&self, seq: i64) {
        let mut cur = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *cur = (*cur).max(seq);
    }

    /// What the next transaction publishes (0: nothing).
    pub(crate) fn take(&self) -> i64 {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Record that tasks staged up to `seq` are on disk.
fn publish(c: &Connection, seq: i64) -> Result<()> {
    c.prepare_cached("UPDATE publication SET durable_seq = max(durable_seq, ?1) WHERE id = 1")?.execute([seq])?;
    Ok(())
}

/// Run at the start of every write transaction: publish what is known durable, and stage
/// this batch's tasks if it creates any.
pub(crate) fn prologue(c: &Connection, durable: i64, stage: bool, durability: Durability) -> Result<Option<i64>> {
    if durable > 0 {
        publish(c, durable)?;
    }
    if !stage {
        return Ok(None);
    }
    // Without syncs (Durability::Normal) a commit is as durable as it gets: publish it with itself.
    let sql = match durability {
        Durability::Full => "UPDATE publication SET staged_seq = staged_seq + 1 WHERE id = 1",
        Durability::Normal => {
            "UPDATE publication SET staged_seq = staged_seq + 1, durable_seq = staged_seq + 1 WHERE id = 1"
        }
    };
    c.prepare_cached(sql)?.execute([])?;
    Ok(Some(c.prepare_cached("SELECT staged_seq FROM publication WHERE id = 1")?.query_row([], |r| r.get(0))?))
}

/// The results of a batch that staged tasks under `seq`, on their way to the disk: once
/// synced, `seq` is recorded for publication and the results are handed back.
pub(crate) struct Publish {
    pub(crate) seq: i64,
    pub(crate) held: Vec<Box<dyn Held>>,
    pub(crate) publisher: std::sync::Arc<Publisher>,
}

impl Held for Publish {
    fn release(self: Box<Self>, sync_err: Option<&LedgerError>) {
        if sync_err.is_none() {
            self.publisher.durable(self.seq);
        }
        self.held.into_iter().for_each(|h| h.release(sync_err));
    }
}

/// At open, before this process writes: publish whatever was staged and never published
/// (a process died between its COMMIT and its sync, or the power went), after a sync of the
/// WAL that covers it. Saves the first claims of those tasks a sync each.
pub(crate) fn repair_at_open(c: &Connection, db_path: &std::path::Path, durability: Durability) -> Result<()> {
    let (staged, durable): (i64, i64) = c
        .prepare_cached("SELECT staged_seq, durable_seq FROM publication WHERE id = 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if staged <= durable {
        return Ok(());
    }
    if durability == Durability::Full {
        WalFile::open(db_path)?
            .sync()
            .map_err(|e| LedgerError::Io(format!("cannot sync the ledger's WAL to publish staged tasks: {e}")))?;
    }
    publish(c, staged)?;
    tracing::debug!(staged, durable, "published tasks staged before this process opened the ledger");
    Ok(())
}
