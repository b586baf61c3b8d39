//! What the judge decided and why: the [`Decision`] recorded on the run's events (which model
//! answered, which were skipped by policy or for lack of credentials, which failed and how),
//! and the [`JudgeFailure`] returned when no candidate answered validly.

use machina_core::ErrCode;
use machina_core::config::JudgeMode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The judge's decision for one question; serialized onto the run's events as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// What the question was for (the request's `purpose`).
    pub purpose: String,
    /// How answers were obtained: the configured mode, or `replay` after a fallback.
    pub mode: JudgeMode,
    /// True when live or record mode had no credentials for any candidate and, not being
    /// strict, answered from fixtures instead.
    pub replay_fallback: bool,
    /// The candidate whose answer was used, `"provider/model"`.
    pub chosen: Option<String>,
    /// Candidates never asked, in candidate order.
    pub skipped: Vec<Skip>,
    /// Candidates asked that gave no valid answer, in the order they were asked.
    pub failed: Vec<Attempt>,
}

impl Decision {
    pub(crate) fn new(purpose: &str, mode: JudgeMode) -> Self {
        Self {
            purpose: purpose.into(),
            mode,
            replay_fallback: false,
            chosen: None,
            skipped: Vec::new(),
            failed: Vec::new(),
        }
    }
}

/// A candidate that was not asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skip {
    /// `"provider/model"`.
    pub candidate: String,
    /// Why it was not asked.
    pub reason: SkipReason,
    /// More for the operator, e.g. where the credential was looked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a candidate was not asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// It matches `judge.deny`.
    #[serde(rename = "denied")]
    Denied,
    /// `judge.allow` is not empty and it matches none of it.
    #[serde(rename = "not in allow list")]
    NotAllowed,
    /// Its provider's credential was found in no credentials directory.
    #[serde(rename = "no credentials")]
    NoCredentials,
}

impl SkipReason {
    /// The spelling used in the decision.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::NotAllowed => "not in allow list",
            Self::NoCredentials => "no credentials",
        }
    }
}

/// A candidate that was asked and gave no valid answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// `"provider/model"`.
    pub candidate: String,
    /// Stable name of the failure: `timeout`, `unreachable`, `credential_rejected`,
    /// `http_status`, `too_large`, `malformed_response`, `no_answer`, `invalid_answer`,
    /// `no_fixture`, `fixture_io`, `credential_unusable`.
    pub kind: String,
    /// What went wrong, for a person (never contains the credential).
    pub error: String,
}

/// No candidate answered validly. Either way the decision says what happened to each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JudgeFailure {
    /// The allow and deny lists left no candidate ([`ErrCode::AutonomyJudgePolicyBlocked`]).
    #[error("{}", Blocked(.0))]
    PolicyBlocked(Decision),
    /// No judge is configured, or candidates were left but none could be asked or none
    /// answered validly ([`ErrCode::AutonomyJudgeUnavailable`]).
    #[error("{}", Unavailable(.0))]
    Unavailable(Decision),
}

impl JudgeFailure {
    /// The code the run's events and the task failure carry.
    pub fn err_code(&self) -> ErrCode {
        match self {
            Self::PolicyBlocked(_) => ErrCode::AutonomyJudgePolicyBlocked,
            Self::Unavailable(_) => ErrCode::AutonomyJudgeUnavailable,
        }
    }

    /// Stable name: the error code's string.
    pub fn kind(&self) -> &'static str {
        self.err_code().as_str()
    }

    /// What was skipped and what failed.
    pub fn decision(&self) -> &Decision {
        match self {
            Self::PolicyBlocked(d) | Self::Unavailable(d) => d,
        }
    }
}

struct Blocked<'a>(&'a Decision);

impl fmt::Display for Blocked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the judge model policy leaves no candidate for {:?} (", self.0.purpose)?;
        list(f, self.0)?;
        f.write_str("): allow one of them in judge.allow, or take it off judge.deny")
    }
}

struct Unavailable<'a>(&'a Decision);

impl fmt::Display for Unavailable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.skipped.is_empty() && d.failed.is_empty() {
            return f.write_str(
                "no judge model is configured: set judge.primary to \"<provider id>/<model>\" and declare the provider in [[judge.providers]]",
            );
        }
        write!(f, "no judge model answered validly for {:?} (", d.purpose)?;
        list(f, d)?;
        f.write_str(")")?;
        let mut hints = Vec::new();
        if d.skipped.iter().any(|s| s.reason == SkipReason::NoCredentials) {
            hints.push(
                "provide each provider's credential with LoadCredential= in the unit, or as a root-only file in judge.credentials_dir",
            );
        }
        if d.failed.iter().any(|a| a.kind == "no_fixture") {
            hints.push("record fixtures first with judge.mode = \"record\"");
        }
        if d.failed.iter().any(|a| a.kind == "credential_rejected") {
            hints.push("replace the rejected credential");
        }
        if d.failed.iter().any(|a| a.kind != "no_fixture" && a.kind != "credential_rejected") {
            hints.push("check that the providers are reachable and add fallbacks to judge.fallback");
        }
        if !hints.is_empty() {
            write!(f, ": {}", hints.join("; "))?;
        }
        Ok(())
    }
}

/// `candidate: why; …` for every skipped and failed candidate.
fn list(f: &mut fmt::Formatter<'_>, d: &Decision) -> fmt::Result {
    let skipped = d.skipped.iter().map(|s| match &s.detail {
        Some(detail) => format!("{}: {} ({detail})", s.candidate, s.reason.as_str()),
        None => format!("{}: {}", s.candidate, s.reason.as_str()),
    });
    let failed = d.failed.iter().map(|a| format!("{}: {}", a.candidate, a.error));
    f.write_str(&skipped.chain(failed).collect::<Vec<_>>().join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_serializes_with_readable_reasons() {
        let mut d = Decision::new("plan", JudgeMode::Live);
        d.chosen = Some("anthropic/b".into());
        d.skipped.push(Skip { candidate: "openai/a".into(), reason: SkipReason::NotAllowed, detail: None });
        d.failed.push(Attempt { candidate: "openai/c".into(), kind: "timeout".into(), error: "slow".into() });
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "purpose": "plan", "mode": "live", "replay_fallback": false, "chosen": "anthropic/b",
                "skipped": [{"candidate": "openai/a", "reason": "not in allow list"}],
                "failed": [{"candidate": "openai/c", "kind": "timeout", "error": "slow"}],
            })
        );
        assert_eq!(serde_json::from_value::<Decision>(v).unwrap(), d);
    }

    #[test]
    fn failures_carry_their_codes_and_remedies() {
        let mut d = Decision::new("plan", JudgeMode::Live);
        d.skipped.push(Skip { candidate: "openai/a".into(), reason: SkipReason::Denied, detail: None });
        let blocked = JudgeFailure::PolicyBlocked(d.clone());
        assert_eq!(blocked.kind(), "AUTONOMY_JUDGE_POLICY_BLOCKED");
        assert!(blocked.to_string().contains("openai/a: denied") && blocked.to_string().contains("judge.deny"));
        d.skipped[0].reason = SkipReason::NoCredentials;
        let unavailable = JudgeFailure::Unavailable(d).to_string();
        assert!(unavailable.contains("LoadCredential="), "{unavailable}");
        let none = JudgeFailure::Unavailable(Decision::new("plan", JudgeMode::Live));
        assert_eq!(none.err_code(), ErrCode::AutonomyJudgeUnavailable);
        assert!(none.to_string().contains("judge.primary"));
    }
}
