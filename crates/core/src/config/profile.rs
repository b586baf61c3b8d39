//! Profiles: one switch that sets safe defaults for production, and the printable
//! effective configuration.
//!
//! Layering, lowest first: the built-in defaults (which are the `dev` values), the
//! profile's defaults, then every drop-in. So an explicit setting always beats the
//! profile, and the profile beats the built-in default.

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// Which defaults unset settings take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Development: NORMAL durability, tasks run even where a protection is missing,
    /// the http tool may reach any public host, `api.auth = "none"` is allowed.
    Dev,
    /// Production: see [`PROD_DEFAULTS`].
    Prod,
}

/// What `profile = "prod"` changes (each can still be set explicitly).
pub const PROD_DEFAULTS: &str = r#"
[ledger]
synchronous = "full"
[sandbox]
required = true
[tools.http]
default_deny = true
timeout_ms = 10000
[worker]
max_task_timeout_secs = 600
[api]
rate_limit_per_sec = 20
"#;

impl Profile {
    /// The profile a merged configuration asks for (dev when unset).
    pub(super) fn of(merged: &toml::Table) -> Result<Self, ConfigError> {
        match merged.get("profile") {
            None => Ok(Self::Dev),
            Some(toml::Value::String(s)) if s == "dev" => Ok(Self::Dev),
            Some(toml::Value::String(s)) if s == "prod" => Ok(Self::Prod),
            Some(v) => Err(ConfigError(format!("profile must be \"dev\" or \"prod\", not {v}"))),
        }
    }

    /// The profile's layer of defaults.
    pub(super) fn defaults(self) -> toml::Table {
        match self {
            Self::Dev => toml::Table::new(),
            Self::Prod => PROD_DEFAULTS.parse().expect("PROD_DEFAULTS is valid TOML"),
        }
    }
}

/// Marker printed in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Settings {
    /// The effective configuration as TOML, with anything secret-looking redacted
    /// (settings hold paths to secrets, not secrets, but a value under a key naming a
    /// secret is never printed, so a future or misplaced one cannot leak).
    pub fn to_redacted_toml(&self) -> String {
        let mut v = toml::Value::try_from(self).expect("settings serialize");
        redact(&mut v);
        toml::to_string(&v).expect("settings print as TOML")
    }

    /// The effective configuration as JSON, redacted like [`Settings::to_redacted_toml`].
    pub fn to_redacted_json(&self) -> serde_json::Value {
        let mut v = toml::Value::try_from(self).expect("settings serialize");
        redact(&mut v);
        serde_json::to_value(v).expect("TOML values convert to JSON")
    }
}

fn redact(v: &mut toml::Value) {
    match v {
        toml::Value::Table(t) => {
            for (k, val) in t.iter_mut() {
                let secret = ["secret", "token", "password", "api_key", "credential"].iter().any(|s| k.contains(s))
                    && !k.ends_with("_file")
                    && !k.ends_with("_dir")
                    && !k.ends_with("_dirs")
                    // judge.providers[].credential names a credential id, not its content
                    && k != "credential";
                if secret && !matches!(val, toml::Value::Table(_)) {
                    *val = toml::Value::String(REDACTED.into());
                } else {
                    redact(val);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        crate::config::load_text(text)
    }

    #[test]
    fn prod_sets_its_defaults_and_explicit_settings_win() {
        let dev = load("").unwrap();
        assert_eq!(dev.profile, Profile::Dev);
        assert!(!dev.sandbox.required && !dev.tools.http.default_deny);
        assert_eq!(dev.ledger.synchronous, "normal");
        let prod = load("profile = 'prod'\n").unwrap();
        assert!(prod.sandbox.required && prod.tools.http.default_deny);
        assert_eq!(prod.ledger.synchronous, "full");
        assert_eq!(prod.worker.max_task_timeout_secs, 600);
        assert_eq!(prod.tools.http.timeout_ms, 10_000);
        // Untouched by the profile: the built-in default.
        assert_eq!(prod.worker.lease_secs, 30);
        let explicit =
            load("profile = 'prod'\n[sandbox]\nrequired = false\n[tools.http]\nallow_hosts = ['a.example']\n").unwrap();
        assert!(!explicit.sandbox.required, "explicit beats profile");
        assert!(explicit.tools.http.default_deny, "the rest of the section keeps the profile");
    }

    #[test]
    fn prod_refuses_running_without_auth() {
        assert!(load("[api]\nauth = 'none'\n").is_ok());
        let err = load("profile = 'prod'\n[api]\nauth = 'none'\n").unwrap_err().to_string();
        assert!(err.contains("prod"), "{err}");
        let err = load("profile = 'staging'\n").unwrap_err().to_string();
        assert!(err.contains("staging") && err.contains("x.toml"), "{err}");
    }

    #[test]
    fn effective_configuration_prints_and_redacts() {
        let s = load("profile = 'prod'\n").unwrap();
        let text = s.to_redacted_toml();
        assert!(text.contains("profile = \"prod\""), "{text}");
        assert!(text.contains("synchronous = \"full\""), "{text}");
        let mut v: toml::Value = toml::from_str("[api]\nhmac_secret = 'hunter2'\nhmac_secret_file = '/x'\n").unwrap();
        redact(&mut v);
        assert_eq!(v["api"]["hmac_secret"].as_str(), Some(REDACTED));
        assert_eq!(v["api"]["hmac_secret_file"].as_str(), Some("/x"));
    }
}
