//! machina-core: the vocabulary every other machina crate speaks.
//!
//! Run and task states with their legal transitions, the stable error kinds
//! used in HTTP bodies, logs and metrics alike, the task failure codes and the
//! retry policy over them, validated settings from TOML drop-ins, recipes and
//! the plans they render, and the canonical task key.

pub mod clock;
pub mod config;
pub mod error;
pub mod lease;
pub mod log;
pub mod plan;
pub mod recipe;
pub mod retry;
pub mod signing;
pub mod snapshot_request;
pub mod state;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ErrorKind;
pub use plan::{Plan, TaskSpec, task_key, task_key_digest};
pub use recipe::{Recipe, RecipeBook, RecipeError};
pub use retry::{ErrCode, RetryPolicy};
pub use state::{RunStatus, Step, StepOutcome, TaskStatus};

/// Version of this build, stored in the ledger's meta table.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");
