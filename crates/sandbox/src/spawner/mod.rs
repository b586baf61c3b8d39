//! The spawner ("zygote"): a small, single-threaded `machina-task-exec --serve` process
//! the worker starts once, which forks each task and has the child confine itself
//! exactly as the wrapper does — so a task costs a fork of a small process and one exec,
//! not a posix_spawn of the wrapper plus the wrapper's exec of the task.
//!
//! - [`proto`]: one `SOCK_SEQPACKET` message per request or reply; a spawn request
//!   carries the spec, the pin, argv, env and directory, and the child's three stdio
//!   descriptors (`SCM_RIGHTS`).
//! - [`server`]: forks per request; the child sets up its stdio and directory, then
//!   setsid, rlimits, capabilities, no_new_privs, landlock, the required-protections
//!   check and the pin check on the open file it then execs — failing with the wrapper's
//!   exit codes (124/125/127) and `machina-task-exec: ` lines on the task's stderr. The
//!   spawner is the children's parent: it reaps them and reports each wait status.
//! - [`client`]: the worker's async handle ([`Spawner`], [`SpawnedChild`]); the pid it
//!   returns leads the task's process group, for killpg.
//! - [`lazy`]: start on first use, restart after a crash, back off after failed starts.
//!
//! Failure handling: a spawner that cannot be started or has died is logged as an error
//! and callers fall back to the wrapper ([`SpawnError::use_wrapper`]); tasks it was
//! running fail their wait with [`SpawnError::Lost`] (their process groups can still be
//! killed). When the worker goes, the socket closes and the spawner kills and reaps
//! every child it still has, then exits.

mod client;
mod lazy;
mod proto;
mod server;

pub use client::{ChildIo, START_TIMEOUT, SpawnError, SpawnRequest, SpawnedChild, Spawner};
pub use lazy::{LazySpawner, RETRY_AFTER};
pub use proto::MAX_REQUEST_BYTES;
pub(crate) use server::serve;
