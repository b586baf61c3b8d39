//! Task failure codes and the policy deciding which are retried, and when.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Why a task attempt (or a step) failed. Stable strings, stored in `attempts.err_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrCode {
    /// The task's process could not be started.
    BootFail,
    /// A network dependency failed.
    NetFail,
    /// The task ran past its wall-clock timeout and was killed.
    Timeout,
    /// The task ran out of memory.
    Oom,
    /// The command exited non-zero (or died of a signal).
    CmdNonzero,
    /// The task asked for something the policy forbids (e.g. an executable off the allowlist).
    PolicyDenied,
    /// The worker holding the task's lease vanished; the lease expired and was reclaimed.
    LeaseLost,
    /// The compiled plan is invalid for its recipe.
    PlanInvalid,
    /// The run was canceled while the task ran; the task was killed.
    Canceled,
    /// The external policy driver failed: timed out, exceeded its output cap, exited
    /// non-zero or could not be started.
    DriverFail,
    /// The judge model policy left no candidate (all denied, or none allowed).
    AutonomyJudgePolicyBlocked,
    /// Candidates were left but none answered validly (unreachable, no credentials,
    /// errors, invalid answers).
    AutonomyJudgeUnavailable,
}

impl ErrCode {
    /// Every code.
    pub const ALL: &'static [ErrCode] = &[
        Self::BootFail,
        Self::NetFail,
        Self::Timeout,
        Self::Oom,
        Self::CmdNonzero,
        Self::PolicyDenied,
        Self::LeaseLost,
        Self::PlanInvalid,
        Self::Canceled,
        Self::DriverFail,
        Self::AutonomyJudgePolicyBlocked,
        Self::AutonomyJudgeUnavailable,
    ];

    /// The stable string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BootFail => "BOOT_FAIL",
            Self::NetFail => "NET_FAIL",
            Self::Timeout => "TIMEOUT",
            Self::Oom => "OOM",
            Self::CmdNonzero => "CMD_NONZERO",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::LeaseLost => "LEASE_LOST",
            Self::PlanInvalid => "PLAN_INVALID",
            Self::Canceled => "CANCELED",
            Self::DriverFail => "DRIVER_FAIL",
            Self::AutonomyJudgePolicyBlocked => "AUTONOMY_JUDGE_POLICY_BLOCKED",
            Self::AutonomyJudgeUnavailable => "AUTONOMY_JUDGE_UNAVAILABLE",
        }
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = Self::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown error code {s:?} (expected one of: {})", all.join(", "))
        })
    }
}

/// Which failures are retried, how often, and how long to wait in between.
///
/// Safe defaults: infrastructure faults (BOOT_FAIL, NET_FAIL, LEASE_LOST) are
/// retried with capped exponential backoff; a command's own failure fails closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Codes that are retried; every other code is terminal.
    pub retry_on: BTreeSet<ErrCode>,
    /// Attempts per task (the first try included) before the run becomes retries_exceeded.
    pub max_attempts: u32,
    /// Backoff before the first retry, in milliseconds (doubles each time).
    pub backoff_base_ms: u64,
    /// Longest backoff, in milliseconds.
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retry_on: [ErrCode::BootFail, ErrCode::NetFail, ErrCode::LeaseLost].into_iter().collect(),
            max_attempts: 3,
            backoff_base_ms: 500,
            backoff_cap_ms: 60_000,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Queue the task again, not before `delay_ms` from now.
    Retry {
        /// Backoff in milliseconds.
        delay_ms: u64,
    },
    /// The code is not retried: the task and its run fail.
    Terminal,
    /// The code is retried but the attempts are used up.
    Exhausted,
}

impl RetryPolicy {
    /// Decide after `attempts_used` attempts (≥ 1) failed with `code`.
    ///
    /// `jitter` is a number in [0, 1): the delay is half the exponential step
    /// plus `jitter` times the other half ("equal jitter"), so retries of many
    /// tasks spread out but never fire immediately.
    pub fn decide(&self, code: ErrCode, attempts_used: u32, jitter: f64) -> RetryDecision {
        if !self.retry_on.contains(&code) {
            return RetryDecision::Terminal;
        }
        if attempts_used >= self.max_attempts {
            return RetryDecision::Exhausted;
        }
        let exp = attempts_used.saturating_sub(1).min(32);
        let step = self.backoff_base_ms.saturating_mul(1u64 << exp).min(self.backoff_cap_ms);
        let half = step / 2;
        let delay_ms = half + ((step - half) as f64 * jitter.clamp(0.0, 1.0)) as u64;
        RetryDecision::Retry { delay_ms }
    }

    /// A random jitter in [0, 1).
    pub fn random_jitter() -> f64 {
        rand::random::<f64>()
    }

    /// Check the values make sense; the message names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.backoff_base_ms > self.backoff_cap_ms {
            return Err("retry.backoff_base_ms must not exceed retry.backoff_cap_ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_failures_fail_closed_by_default() {
        let p = RetryPolicy::default();
        for code in [ErrCode::CmdNonzero, ErrCode::Timeout, ErrCode::Oom, ErrCode::PolicyDenied] {
            assert_eq!(p.decide(code, 1, 0.5), RetryDecision::Terminal, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let p = RetryPolicy { max_attempts: 40, backoff_base_ms: 1000, backoff_cap_ms: 5000, ..RetryPolicy::default() };
        let d = |n, j| match p.decide(ErrCode::BootFail, n, j) {
            RetryDecision::Retry { delay_ms } => delay_ms,
            other => panic!("{other:?}"),
        };
        assert_eq!(d(1, 0.0), 500);
        assert_eq!(d(1, 0.999_999), 999);
        assert_eq!(d(2, 0.0), 1000);
        assert_eq!(d(3, 0.0), 2000);
        assert_eq!(d(10, 0.0), 2500, "capped at 5000, half of it fixed");
        assert!(d(39, 0.99) <= 5000);
    }

    #[test]
    fn attempts_run_out() {
        let p = RetryPolicy::default();
        assert!(matches!(p.decide(ErrCode::NetFail, 2, 0.1), RetryDecision::Retry { .. }));
        assert_eq!(p.decide(ErrCode::NetFail, 3, 0.1), RetryDecision::Exhausted);
    }

    #[test]
    fn codes_parse() {
        assert_eq!("LEASE_LOST".parse::<ErrCode>().unwrap(), ErrCode::LeaseLost);
        assert!("NOPE".parse::<ErrCode>().unwrap_err().contains("BOOT_FAIL"));
    }
}
