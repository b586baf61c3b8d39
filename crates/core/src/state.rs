//! Run and task states, the steps of a run, and which transitions are legal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable string stored in the ledger and shown to users.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?} (expected one of: {})",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum!(
    /// Where a run is in its life.
    RunStatus {
        /// Submitted, waiting for a worker to compile its plan.
        Queued => "queued",
        /// A worker is compiling the plan (CompileST).
        Compiling => "compiling",
        /// The plan waits at the approval gate (DecideST).
        WaitingInput => "waiting_input",
        /// Tasks are fanned out and running (ExecuteST).
        Executing => "executing",
        /// Every task succeeded.
        Succeeded => "succeeded",
        /// A step failed with an error that is not retried.
        Failed => "failed",
        /// A retryable error happened more often than the policy allows.
        RetriesExceeded => "retries_exceeded",
        /// An operator canceled the run.
        Canceled => "canceled",
    }
);

impl RunStatus {
    /// No further transition happens without an operator (retry).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::RetriesExceeded | Self::Canceled)
    }

    /// Whether the state machine allows `self → to`.
    pub fn can_become(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, to),
            (Queued, Compiling | Canceled)
                | (Compiling, Queued | WaitingInput | Executing | Failed | RetriesExceeded | Canceled)
                | (WaitingInput, Executing | Canceled)
                | (Executing, Succeeded | Failed | RetriesExceeded | Canceled)
                | (Failed | RetriesExceeded, Queued | Executing)
        )
    }
}

string_enum!(
    /// The steps of a run, recorded append-only in `run_steps`.
    Step {
        /// Turn the intent into a plan.
        Compile => "CompileST",
        /// The approval gate.
        Decide => "DecideST",
        /// Fan out and run the plan's tasks.
        Execute => "ExecuteST",
    }
);

string_enum!(
    /// What a `run_steps` row records.
    StepOutcome {
        /// The step began.
        Started => "started",
        /// The step finished well.
        Succeeded => "succeeded",
        /// The step failed.
        Failed => "failed",
    }
);

string_enum!(
    /// Where a task is.
    TaskStatus {
        /// Waiting for a worker (possibly until a backoff time).
        Queued => "queued",
        /// Claimed by a worker under a lease.
        Leased => "leased",
        /// Committed successfully (exactly once).
        Succeeded => "succeeded",
        /// Failed terminally, or out of retries.
        Failed => "failed",
        /// Its run was canceled before it finished.
        Canceled => "canceled",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), *s);
        }
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>().unwrap(), *s);
        }
        assert!("running".parse::<RunStatus>().unwrap_err().contains("queued"));
    }

    #[test]
    fn terminal_states_only_leave_by_retry() {
        use RunStatus::*;
        for to in RunStatus::ALL {
            assert!(!Succeeded.can_become(*to), "succeeded -> {to}");
            assert!(!Canceled.can_become(*to), "canceled -> {to}");
        }
        assert!(Failed.can_become(Queued));
        assert!(RetriesExceeded.can_become(Executing));
        assert!(!Queued.can_become(Executing));
        assert!(!WaitingInput.can_become(Succeeded));
        assert!(WaitingInput.can_become(Executing));
    }
}
