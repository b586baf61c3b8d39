//! The language model of the REPL: the judge of `[judge]` (same policy, credentials and
//! record/replay as the daemons'), asked two questions per message — what action the message
//! means (purpose `chat-intent`) and how to say what happened (purpose `chat-summary`).
//!
//! Prompts hold only the message, the session's recent turns and the result shown, never a
//! time or anything else that changes between two identical sessions, so a recorded session
//! replays from its fixtures.

use machina_core::config::{SYSTEM_CONFIG_DIRS, Settings};
use machina_planner::llm::{Judge, JudgeFailure, JudgeMode, JudgeRequest};
use serde_json::{Value, json};
use std::path::PathBuf;

use super::action::{self, Action};
use super::execute::{Refusal, Reply};
use super::history::{History, truncate};

/// Turns of history the model sees with each message.
const CONTEXT_TURNS: usize = 6;
/// Longest result text the summary question carries.
const RESULT_MAX_CHARS: usize = 4000;
/// Longest summary shown.
const SUMMARY_MAX_CHARS: usize = 600;

const INTENT_SYSTEM: &str = "You turn an operator's message to machina into one action. machina \
runs supervised, sandboxed work: a run is a recipe applied to inputs; it is planned, waits at an \
approval gate (status waiting_input), then executes. Actions: submit (an intent: recipe, goal in \
words, inputs, partition), run (a recipe with inputs), status (one run), list (runs, optionally \
only those in one status), approve (a run waiting for approval), retry (a failed run), cancel (a \
run), config (show the effective configuration; changing it is an operator's file edit), help \
(what the operator can say), unknown (anything else; say why in reason). Set the fields the action \
uses and null for the others. Take run ids only from the message or the history, never invent \
one; \"last\" names the most recent run of this session. The history holds earlier messages of \
this session, oldest first.";

const SUMMARY_SYSTEM: &str = "You tell an operator, in one or two plain sentences, what machina \
just did in answer to their message. Use only the facts given. Name run ids in full. When a run \
waits for approval, say that \"approve RUN\" approves it; when it failed, that \"retry RUN\" \
retries it.";

/// A judge ready for the REPL's questions.
#[derive(Debug)]
pub struct Model {
    judge: Judge,
    name: String,
}

/// Builds the judge from the configuration in `config_dirs` (empty: the system's), with
/// `mode` overriding `judge.mode`. `Err` says why there is none, for the operator.
pub async fn load(config_dirs: Vec<PathBuf>, mode: Option<JudgeMode>) -> Result<Model, String> {
    // What systemd hands a unit with LoadCredential=; an operator may point it at their own.
    let systemd_credentials = std::env::var("CREDENTIALS_DIRECTORY").ok();
    // Reading drop-ins and building the HTTP client (TLS roots from disk) both block.
    tokio::task::spawn_blocking(move || build(config_dirs, mode, systemd_credentials.as_deref()))
        .await
        .map_err(|e| format!("loading the judge failed: {e}"))?
}

fn build(config_dirs: Vec<PathBuf>, mode: Option<JudgeMode>, credentials: Option<&str>) -> Result<Model, String> {
    let dirs =
        if config_dirs.is_empty() { SYSTEM_CONFIG_DIRS.iter().map(PathBuf::from).collect() } else { config_dirs };
    let settings = Settings::load(&dirs).map_err(|e| format!("the configuration is not usable: {e}"))?;
    let mut judge = settings.judge.clone();
    if let Some(m) = mode {
        judge.mode = m;
    }
    if !judge.is_configured() {
        return Err("no judge model is configured (judge.primary is empty)".into());
    }
    let built = Judge::new(&judge, judge.credentials_dirs(credentials), judge.fixtures_dir(&settings.state_dir))
        .map_err(|e| format!("the judge cannot be used: {e}"))?;
    Ok(Model { judge: built, name: judge.primary })
}

impl Model {
    /// The primary model, `"provider/model"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Phase 1: the action `message` means, with the session's recent turns as context.
    pub async fn intent(&self, message: &str, history: &History) -> Result<Action, JudgeFailure> {
        let req = JudgeRequest {
            purpose: "chat-intent".into(),
            system: INTENT_SYSTEM.into(),
            prompt: json!({"history": history.recent(CONTEXT_TURNS), "message": message}).to_string(),
            schema: Some(action::schema()),
        };
        self.judge.ask(&req, action::from_model).await.map(|j| j.value)
    }

    /// Phase 3: one or two sentences on what `action` did.
    pub async fn summary(
        &self,
        message: &str,
        action: &Action,
        result: &Result<Reply, Refusal>,
    ) -> Result<String, JudgeFailure> {
        let outcome = match result {
            Ok(r) => json!({"ok": true, "shown": truncate(&r.text, RESULT_MAX_CHARS)}),
            Err(r) => json!({"ok": false, "shown": r.line()}),
        };
        let req = JudgeRequest {
            purpose: "chat-summary".into(),
            system: SUMMARY_SYSTEM.into(),
            prompt: json!({"message": message, "action": action.describe(), "outcome": outcome}).to_string(),
            schema: Some(json!({
                "type": "object",
                "properties": {"summary": {"type": "string", "description": "one or two plain sentences"}},
                "required": ["summary"],
                "additionalProperties": false,
            })),
        };
        self.judge.ask(&req, summary_from_model).await.map(|j| j.value)
    }
}

/// The summary as one line of reasonable length.
fn summary_from_model(answer: &Value) -> Result<String, String> {
    let text = answer["summary"].as_str().ok_or("no \"summary\" string")?;
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return Err("the summary is empty".into());
    }
    Ok(truncate(&line, SUMMARY_MAX_CHARS))
}

/// The note shown when the model gave nothing usable for `phase` ("parsed", "summarized"):
/// its answers were unusable, or the judge failed (named by its error code).
pub fn failure_note(phase: &str, f: &JudgeFailure) -> String {
    let failed = &f.decision().failed;
    match failed.last() {
        Some(last) if failed.iter().all(|a| a.kind == "invalid_answer") => {
            format!("({phase} without the model: {}: {})", last.candidate, last.error)
        }
        _ => format!("({phase} without the model: {}: {f})", f.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machina_planner::llm::{Attempt, Decision};

    #[test]
    fn summaries_are_one_line() {
        assert_eq!(summary_from_model(&json!({"summary": " two\nlines  here "})).unwrap(), "two lines here");
        assert!(summary_from_model(&json!({"summary": "  "})).is_err());
        assert!(summary_from_model(&json!({"text": "x"})).is_err());
    }

    #[test]
    fn failure_notes_name_the_code_or_the_bad_answer() {
        let mut d: Decision =
            serde_json::from_value(json!({"purpose": "chat-intent", "mode": "live", "replay_fallback": false,
                "chosen": null, "skipped": [], "failed": []}))
            .unwrap();
        d.failed.push(Attempt { candidate: "m/a".into(), kind: "http_status".into(), error: "HTTP 500: x".into() });
        let note = failure_note("parsed", &JudgeFailure::Unavailable(d.clone()));
        assert!(note.starts_with("(parsed without the model: AUTONOMY_JUDGE_UNAVAILABLE: "), "{note}");
        assert!(note.contains("HTTP 500"), "{note}");
        d.failed[0] =
            Attempt { candidate: "m/a".into(), kind: "invalid_answer".into(), error: "invalid answer: nope".into() };
        assert_eq!(
            failure_note("parsed", &JudgeFailure::Unavailable(d)),
            "(parsed without the model: m/a: invalid answer: nope)"
        );
    }

    #[tokio::test]
    async fn no_judge_without_a_primary_model() {
        let dir = tempfile::tempdir().unwrap();
        let why = load(vec![dir.path().into()], None).await.unwrap_err();
        assert!(why.contains("judge.primary"), "{why}");
        std::fs::write(dir.path().join("x.toml"), "[judge]\nprimary = 'nope/m'\n").unwrap();
        let why = load(vec![dir.path().into()], None).await.unwrap_err();
        assert!(why.contains("not usable") && why.contains("nope"), "{why}");
    }
}
