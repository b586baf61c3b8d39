//! The jobs the writer runs: a closure answered as its [`Ack`] says, and a split one whose
//! first part is answered at COMMIT and second once durable.

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::error::{LedgerError, Result};
use crate::sync::{Held, HeldValue};
use crate::writer::{Ack, Job, Reply};

/// A closure run in a batch, answered as `ack` says.
pub(crate) struct WriteJob<F, T> {
    pub(crate) f: F,
    pub(crate) result: Option<Result<T>>,
    pub(crate) reply: Reply<T>,
    pub(crate) ack: Ack,
}

/// Keep a job's result; returns whether it failed.
pub(crate) fn keep<T>(res: Result<T>, slot: &mut Option<Result<T>>) -> bool {
    let failed = res.is_err();
    *slot = Some(res);
    failed
}

/// The error of a job's last run, if it failed.
pub(crate) fn error_of<T>(result: &Option<Result<T>>) -> Option<LedgerError> {
    match result {
        Some(Err(e)) => Some(e.clone()),
        _ => None,
    }
}

/// The outcome of a job's last run, or of its transaction.
pub(crate) fn outcome<T>(commit_err: Option<&LedgerError>, result: Option<Result<T>>) -> Result<T> {
    match (commit_err, result) {
        (Some(e), _) => Err(e.clone()),
        (None, Some(r)) => r,
        (None, None) => Err(LedgerError::Db("internal: a job was delivered without running".into())),
    }
}

impl<F, T> Job for WriteJob<F, T>
where
    T: Send + 'static,
    F: Fn(&Connection, i64) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        keep((self.f)(conn, now), &mut self.result)
    }

    fn committed(self: Box<Self>, commit_err: Option<&LedgerError>) -> Option<Box<dyn Held>> {
        match (outcome(commit_err, self.result), self.ack) {
            (Ok(value), Ack::Durable | Ack::Published) => Some(Box::new(HeldValue { value, reply: self.reply })),
            (other, _) => {
                self.reply.send(other);
                None
            }
        }
    }

    fn early(&self) -> bool {
        self.ack == Ack::Committed
    }

    fn published(&self) -> bool {
        self.ack == Ack::Published
    }

    fn fail(self: Box<Self>, err: LedgerError) {
        self.reply.send(Err(err));
    }

    fn error(&self) -> Option<LedgerError> {
        error_of(&self.result)
    }
}

/// A job whose result has a part seen at COMMIT (`A`, a claim) and a part held until the
/// commit is on disk (`B`, a completion).
pub(crate) struct SplitJob<F, A, B> {
    pub(crate) f: F,
    /// Whether its client will likely write again as soon as it has `A` (see `Job::early`).
    pub(crate) early: bool,
    pub(crate) result: Option<Result<(A, B)>>,
    pub(crate) now: oneshot::Sender<Result<A>>,
    pub(crate) later: oneshot::Sender<Result<B>>,
}

impl<F, A, B> Job for SplitJob<F, A, B>
where
    A: Send + 'static,
    B: Send + 'static,
    F: Fn(&Connection, i64) -> Result<(A, B)> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, now: i64) -> bool {
        keep((self.f)(conn, now), &mut self.result)
    }

    fn committed(self: Box<Self>, commit_err: Option<&LedgerError>) -> Option<Box<dyn Held>> {
        match outcome(commit_err, self.result) {
            Ok((a, b)) => {
                let _ = self.now.send(Ok(a));
                Some(Box::new(HeldValue { value: b, reply: Reply::Async(self.later) }))
            }
            Err(e) => {
                let _ = self.later.send(Err(e.clone()));
                let _ = self.now.send(Err(e));
                None
            }
        }
    }

    fn early(&self) -> bool {
        self.early
    }

    fn fail(self: Box<Self>, err: LedgerError) {
        let _ = self.later.send(Err(err.clone()));
        let _ = self.now.send(Err(err));
    }

    fn error(&self) -> Option<LedgerError> {
        error_of(&self.result)
    }
}
