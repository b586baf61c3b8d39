//! `[arbitration]`: what happens when new work arrives for a partition that already has an
//! active run.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Arbitration settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArbitrationSettings {
    /// `"parallel"` (run both, within `max_parallel_runs`), `"defer"` (queue the new run behind
    /// the active one), `"abort"` (cancel the active run, its running tasks stopped and recorded
    /// as canceled, then start the new one) or `"judge"` (ask the judge; on
    /// AUTONOMY_JUDGE_* use `judge_fallback`).
    pub policy: String,
    /// What `"judge"` falls back to when the judge is blocked or unavailable:
    /// `"parallel"`, `"defer"` or `"abort"`.
    pub judge_fallback: String,
    /// Most active runs a partition may have; a `parallel` decision beyond it defers
    /// instead (0 = no cap).
    pub max_parallel_runs: u32,
}

impl Default for ArbitrationSettings {
    fn default() -> Self {
        Self { policy: "parallel".into(), judge_fallback: "defer".into(), max_parallel_runs: 0 }
    }
}

impl ArbitrationSettings {
    /// Whether a busy partition needs deciding at all (the default lets every run through
    /// without a decision, as before arbitration existed).
    pub fn is_active(&self) -> bool {
        self.policy != "parallel" || self.max_parallel_runs > 0
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !["parallel", "defer", "abort", "judge"].contains(&self.policy.as_str()) {
            return Err(ConfigError(format!(
                "arbitration.policy must be \"parallel\", \"defer\", \"abort\" or \"judge\", not {:?}",
                self.policy
            )));
        }
        if !["parallel", "defer", "abort"].contains(&self.judge_fallback.as_str()) {
            return Err(ConfigError(format!(
                "arbitration.judge_fallback must be \"parallel\", \"defer\" or \"abort\", not {:?}",
                self.judge_fallback
            )));
        }
        Ok(())
    }
}
