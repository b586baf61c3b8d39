//! `[driver]`: the external policy driver, a plan source (being written).

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// External policy driver settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriverSettings {}

impl DriverSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
