//! `[judge]`: LLM providers, the judge model policy, credentials and modes (being written).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The LLM judge and planner settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSettings {}

impl JudgeSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
