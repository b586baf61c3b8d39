//! Phase 3 without a model: a one-line summary of what happened, from templates, saying
//! what the operator can do next in the REPL's own words.

use machina_core::RunStatus;
use serde_json::Value;
use std::collections::BTreeMap;

use super::action::Action;
use super::execute::{Refusal, Reply, run_record};

/// Where an operator changes the configuration (the REPL only shows it).
const CONFIG_HINT: &str = "that is the effective configuration (secrets redacted); to change it, \
add a drop-in to /etc/machina/config.d/ and restart machina";

/// The template summary of `action`'s result.
pub fn template(action: &Action, result: &Result<Reply, Refusal>) -> String {
    let reply = match result {
        Ok(r) => r,
        Err(refusal) => return refused(action, refusal),
    };
    match action {
        Action::List { status } => listed(&reply.doc, status.as_deref()),
        Action::Config => CONFIG_HINT.into(),
        Action::Approve { .. } => {
            let run = run_record(&reply.doc);
            let by = run["approvedBy"].as_str().unwrap_or("you");
            format!("approved by {by}; {}", run_sentence(run))
        }
        _ => run_sentence(run_record(&reply.doc)),
    }
}

/// `run ID is STATUS` and what to do about it.
fn run_sentence(run: &Value) -> String {
    let id = run["id"].as_str().unwrap_or("?");
    let status = run["status"].as_str().unwrap_or("?");
    let mut s = match status {
        "succeeded" => format!("run {id} succeeded"),
        _ => format!("run {id} is {status}"),
    };
    if let Some(tasks) = run["tasks"].as_array().filter(|t| !t.is_empty()) {
        let done = tasks.iter().filter(|t| t["status"] == "succeeded").count();
        s.push_str(&format!(" ({done}/{} tasks succeeded)", tasks.len()));
    }
    let next = match status.parse::<RunStatus>() {
        Ok(RunStatus::WaitingInput) => format!(": approve it with \"approve {id}\""),
        Ok(RunStatus::Queued | RunStatus::Compiling | RunStatus::Executing) => {
            format!(": see how it goes with \"status {id}\"")
        }
        Ok(RunStatus::Failed | RunStatus::RetriesExceeded) => {
            let code = run["errCode"].as_str().map(|c| format!(" ({c})")).unwrap_or_default();
            format!("{code}: retry it with \"retry {id}\"")
        }
        Ok(RunStatus::Succeeded | RunStatus::Canceled) | Err(_) => String::new(),
    };
    s + &next
}

/// `N run(s): a queued, b succeeded` (statuses in life order), and how to approve.
fn listed(doc: &Value, filter: Option<&str>) -> String {
    let runs = doc["runs"].as_array().cloned().unwrap_or_default();
    let what = filter.map(|f| format!(" {f}")).unwrap_or_default();
    if runs.is_empty() {
        return format!("no{what} runs");
    }
    let mut counts: BTreeMap<usize, (&str, usize)> = BTreeMap::new();
    for r in &runs {
        let status = r["status"].as_str().unwrap_or("?");
        let order = status
            .parse::<RunStatus>()
            .map_or(usize::MAX, |st| RunStatus::ALL.iter().position(|s| *s == st).unwrap_or(usize::MAX));
        counts.entry(order).or_insert((status, 0)).1 += 1;
    }
    let parts: Vec<String> = counts.values().map(|(st, n)| format!("{n} {st}")).collect();
    let mut s = format!("{}{what} run(s): {}", runs.len(), parts.join(", "));
    if let Some(w) = runs.iter().find(|r| r["status"] == "waiting_input") {
        s.push_str(&format!("; approve one with \"approve {}\"", w["id"].as_str().unwrap_or("RUN")));
    }
    s
}

/// What was refused, and where to look next.
fn refused(action: &Action, r: &Refusal) -> String {
    let run = match action {
        Action::Status { run } | Action::Approve { run } | Action::Retry { run } | Action::Cancel { run } => {
            Some(run.as_str())
        }
        _ => None,
    };
    let hint = match (r.kind.as_str(), run) {
        ("AccessDenied", _) => "only root and members of machina-admin may do this".to_string(),
        ("NotFound", _) => "check the id with \"list\"".into(),
        ("IllegalState" | "RetryDrift", Some(run)) => format!("check the run's state with \"status {run}\""),
        ("InvalidInput" | "PolicyViolation", _) => "fix the request and try again".into(),
        ("Unavailable", _) => "is machina running? try again in a moment".into(),
        _ => "see the error above".into(),
    };
    format!("\"{}\" was refused ({}): {hint}", action.describe(), r.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(doc: Value) -> Result<Reply, Refusal> {
        Ok(Reply { doc, text: String::new() })
    }

    fn run(id: &str, status: &str) -> Value {
        json!({"id": id, "status": status, "recipe": "demo", "queuePartitionKey": "default"})
    }

    #[test]
    fn runs_say_what_to_do_next() {
        let status = Action::Status { run: "r1".into() };
        assert_eq!(
            template(&status, &ok(run("r1", "waiting_input"))),
            "run r1 is waiting_input: approve it with \"approve r1\""
        );
        assert_eq!(template(&status, &ok(run("r1", "queued"))), "run r1 is queued: see how it goes with \"status r1\"");
        assert_eq!(template(&status, &ok(run("r1", "succeeded"))), "run r1 succeeded");
        let mut failed = run("r1", "failed");
        failed["errCode"] = json!("EXEC_NONZERO");
        assert_eq!(template(&status, &ok(failed)), "run r1 is failed (EXEC_NONZERO): retry it with \"retry r1\"");
        let mut detail = run("r1", "executing");
        detail["tasks"] = json!([{"status": "succeeded"}, {"status": "leased"}]);
        assert_eq!(
            template(&status, &ok(detail)),
            "run r1 is executing (1/2 tasks succeeded): see how it goes with \"status r1\""
        );
        // Submissions answer {"intent", "run"}.
        let started = Action::Run { recipe: "demo".into(), inputs: Default::default() };
        assert_eq!(
            template(&started, &ok(json!({"intent": {"id": "i"}, "run": run("r2", "queued")}))),
            "run r2 is queued: see how it goes with \"status r2\""
        );
        let mut approved = run("r1", "executing");
        approved["approvedBy"] = json!("root");
        assert_eq!(
            template(&Action::Approve { run: "r1".into() }, &ok(approved)),
            "approved by root; run r1 is executing: see how it goes with \"status r1\""
        );
    }

    #[test]
    fn lists_count_by_status_in_life_order() {
        let list = Action::List { status: None };
        assert_eq!(template(&list, &ok(json!({"runs": []}))), "no runs");
        let doc = json!({"runs": [run("a", "succeeded"), run("b", "waiting_input"), run("c", "succeeded")]});
        assert_eq!(template(&list, &ok(doc)), "3 run(s): 1 waiting_input, 2 succeeded; approve one with \"approve b\"");
        let failed = Action::List { status: Some("failed".into()) };
        assert_eq!(template(&failed, &ok(json!({"runs": []}))), "no failed runs");
    }

    #[test]
    fn refusals_and_config_point_somewhere() {
        let refusal = |kind: &str| Err(Refusal { kind: kind.into(), message: "m".into() });
        let approve = Action::Approve { run: "r1".into() };
        assert_eq!(
            template(&approve, &refusal("IllegalState")),
            "\"approve r1\" was refused (IllegalState): check the run's state with \"status r1\""
        );
        assert!(template(&approve, &refusal("AccessDenied")).contains("machina-admin"));
        assert!(
            template(&Action::Status { run: "x".into() }, &refusal("NotFound")).ends_with("check the id with \"list\"")
        );
        let config = template(&Action::Config, &ok(Value::String("[api]\n".into())));
        assert!(config.contains("/etc/machina/config.d/"), "{config}");
    }
}
