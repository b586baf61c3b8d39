//! The manager's signals, emitted by whichever machina process caused them
//! (the API on submission and approval, a worker when a compile fans out or
//! a run finishes) and followed by workers and `machinactl watch`.
//!
//! Signals carry no authority: a worker woken by TasksQueued still claims
//! from the ledger, so a spurious or lost signal costs at most one empty
//! claim or one poll interval. The D-Bus policy lets only the `machina` user
//! send them anyway.

use std::num::NonZeroUsize;
use zbus::message::Type;
use zbus::{Connection, MatchRule, MessageStream};

use crate::{INTERFACE, OBJECT_PATH};

/// Work became claimable: `(run_id, count)`.
pub const TASKS_QUEUED: &str = "TasksQueued";
/// A run changed state: `(run_id, state)`.
pub const RUN_STATE_CHANGED: &str = "RunStateChanged";
/// A run waits for approval: `(run_id, plan_sha256)`.
pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";

/// Signals queued for one subscriber before the oldest are dropped (they are hints).
const SUBSCRIBER_QUEUE: usize = 256;

/// Broadcast `TasksQueued(run_id, count)`.
pub async fn tasks_queued(conn: &Connection, run_id: &str, count: u32) -> zbus::Result<()> {
    emit(conn, TASKS_QUEUED, &(run_id, count)).await
}

/// Broadcast `RunStateChanged(run_id, state)`.
pub async fn run_state_changed(conn: &Connection, run_id: &str, state: &str) -> zbus::Result<()> {
    emit(conn, RUN_STATE_CHANGED, &(run_id, state)).await
}

/// Broadcast `ApprovalRequired(run_id, plan_sha256)`.
pub async fn approval_required(conn: &Connection, run_id: &str, plan_sha256: &str) -> zbus::Result<()> {
    emit(conn, APPROVAL_REQUIRED, &(run_id, plan_sha256)).await
}

async fn emit<B>(conn: &Connection, member: &str, body: &B) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::wire::DynamicType,
{
    conn.emit_signal(None::<&str>, OBJECT_PATH, INTERFACE, member, body).await
}

/// A stream of the manager's `member` signals from any sender.
pub async fn subscribe(conn: &Connection, member: &'static str) -> zbus::Result<MessageStream> {
    let rule =
        MatchRule::builder().msg_type(Type::Signal).interface(INTERFACE).member(member).path(OBJECT_PATH).build()?;
    MessageStream::for_match_rule(rule, conn, NonZeroUsize::new(SUBSCRIBER_QUEUE)).await
}
