//! Phase 2: carry an action out through the same D-Bus methods the other machinactl commands
//! call, so the bus policy, the caller check and the approval gate apply unchanged; and show
//! what came back as plain text without timestamps (transcripts stay comparable).

use machina_bus::{BusError, Manager1Proxy};
use serde_json::{Map, Value, json};
use std::fmt::Write;

use super::action::Action;
use crate::exit::{self, CtlError};
use crate::render;

/// How many runs `list` shows.
const LIST_LIMIT: u32 = 20;

/// What machina answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The reply document (`Value::String` for the configuration's TOML).
    pub doc: Value,
    /// The lines shown for it.
    pub text: String,
}

/// Why machina (or the bus) refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error's name: machina's D-Bus error (`IllegalState`, `AccessDenied`…), or
    /// `Unavailable`/`Transport` for the bus itself.
    pub kind: String,
    /// What it said.
    pub message: String,
}

impl Refusal {
    /// The line shown in the transcript.
    pub fn line(&self) -> String {
        format!("error: {}: {}", self.kind, self.message)
    }
}

impl From<BusError> for Refusal {
    fn from(e: BusError) -> Self {
        match e {
            BusError::ZBus(z) => transport(z),
            e => Self { kind: e.short_name().to_string(), message: e.message().unwrap_or_default().to_string() },
        }
    }
}

/// The bus's own refusals and "nobody there", worded as the other commands word them.
fn transport(z: zbus::Error) -> Refusal {
    let e = CtlError::from(z);
    let kind = match e.status {
        exit::PERMISSION_DENIED => "AccessDenied",
        exit::UNAVAILABLE => "Unavailable",
        _ => "Transport",
    };
    Refusal { kind: kind.into(), message: e.message }
}

/// The run record in a reply: `{"intent", "run"}` from submissions, the record itself otherwise.
pub fn run_record(doc: &Value) -> &Value {
    doc.get("run").filter(|r| r.is_object()).unwrap_or(doc)
}

/// Carries out a service action ([`Action::is_local`] ones are the REPL's own business).
pub async fn execute(proxy: &Manager1Proxy<'_>, action: &Action) -> Result<Reply, Refusal> {
    let (doc, text): (Value, fn(&Value) -> String) = match action {
        Action::Submit { recipe, goal, inputs, partition } => {
            let intent = intent_document(recipe, goal, inputs, partition.as_deref());
            (parse(&proxy.submit_intent(&intent.to_string(), "").await?)?, one_run)
        }
        Action::Run { recipe, inputs } => {
            (parse(&proxy.start_run(recipe, &Value::Object(inputs.clone()).to_string()).await?)?, one_run)
        }
        Action::Status { run } => (parse(&proxy.get_run(run).await?)?, status_text),
        Action::List { status } => (parse(&proxy.list_runs(status.as_deref().unwrap_or(""), LIST_LIMIT).await?)?, runs),
        Action::Approve { run } => (parse(&proxy.approve_plan(run, "").await?)?, one_run),
        Action::Retry { run } => (parse(&proxy.retry_run(run).await?)?, one_run),
        Action::Cancel { run } => (parse(&proxy.cancel_run(run).await?)?, one_run),
        Action::Config => {
            let toml = proxy.get_config().await?;
            let mut text = toml.clone();
            if !text.ends_with('\n') {
                text.push('\n');
            }
            return Ok(Reply { doc: Value::String(toml), text });
        }
        Action::Help | Action::Unknown { .. } => unreachable!("local actions are not sent to machina"),
    };
    Ok(Reply { text: text(&doc), doc })
}

/// The document POST /enqueue (and SubmitIntent) takes.
pub fn intent_document(recipe: &str, goal: &str, inputs: &Map<String, Value>, partition: Option<&str>) -> Value {
    let mut doc = json!({"goal": goal, "recipe": recipe, "inputs": inputs});
    if let Some(p) = partition {
        doc["queuePartitionKey"] = json!(p);
    }
    doc
}

fn parse(json: &str) -> Result<Value, Refusal> {
    serde_json::from_str(json)
        .map_err(|e| Refusal { kind: "Internal".into(), message: format!("the service sent invalid JSON: {e}") })
}

fn one_run(doc: &Value) -> String {
    render::run_line(run_record(doc))
}

/// A run with who approved it, its error, what it waits for and its tasks' progress.
fn status_text(d: &Value) -> String {
    let mut out = render::run_line(d);
    if let Some(who) = d["approvedBy"].as_str() {
        let _ = writeln!(out, "  approved by {who}");
    }
    if let Some(msg) = d["errorMessage"].as_str() {
        let _ = writeln!(out, "  error: {msg}");
    }
    if let Some(next) = d["nextAction"].as_str() {
        let _ = writeln!(out, "  next: {next}");
    }
    let _ = writeln!(out, "  {}", render::progress(d));
    out
}

/// Runs one per line (no times: `machinactl list` has them), then the count.
fn runs(v: &Value) -> String {
    let list = v["runs"].as_array().cloned().unwrap_or_default();
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("-").to_string();
    let mut out = String::new();
    for r in &list {
        let _ = writeln!(
            out,
            "{}  {}  recipe={} partition={}",
            s(r, "id"),
            s(r, "status"),
            s(r, "recipe"),
            s(r, "queuePartitionKey")
        );
    }
    let _ = writeln!(out, "{} run(s)", list.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_without_times() {
        let list = json!({"runs": [{"id": "r1", "status": "succeeded", "recipe": "demo", "queuePartitionKey": "default", "updatedAt": 5}]});
        assert_eq!(runs(&list), "r1  succeeded  recipe=demo partition=default\n1 run(s)\n");
        assert_eq!(runs(&json!({"runs": []})), "0 run(s)\n");
        let detail = json!({"id": "r1", "status": "executing", "recipe": "demo", "queuePartitionKey": "default",
            "approvedBy": "root", "steps": [{"at": 1}], "tasks": [{"status": "succeeded"}, {"status": "leased"}]});
        assert_eq!(
            status_text(&detail),
            "r1  executing  recipe=demo partition=default\n  approved by root\n  executing: 1/2 tasks succeeded, 0 failed, 1 running, 0 queued\n"
        );
        let submitted = json!({"intent": {"id": "i1"}, "run": {"id": "r2", "status": "queued", "recipe": "demo", "queuePartitionKey": "p"}});
        assert_eq!(one_run(&submitted), "r2  queued  recipe=demo partition=p\n");
    }

    #[test]
    fn refusals_keep_the_error_name() {
        let r = Refusal::from(BusError::IllegalState("run r1 is not waiting for approval".into()));
        assert_eq!(r.line(), "error: IllegalState: run r1 is not waiting for approval");
        let none = Refusal::from(BusError::ZBus(zbus::Error::Failure("gone".into())));
        assert_eq!(none.kind, "Unavailable");
    }

    #[test]
    fn the_intent_document_is_what_enqueue_takes() {
        let inputs = json!({"n": 1}).as_object().unwrap().clone();
        assert_eq!(
            intent_document("demo", "g", &inputs, Some("team-a")),
            json!({"goal": "g", "recipe": "demo", "inputs": {"n": 1}, "queuePartitionKey": "team-a"})
        );
        assert_eq!(
            intent_document("demo", "g", &Map::new(), None),
            json!({"goal": "g", "recipe": "demo", "inputs": {}})
        );
    }
}
