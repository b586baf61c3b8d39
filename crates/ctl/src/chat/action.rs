//! What an operator's message asks for: the [`Action`] enum, which is also the JSON a model
//! answers with ([`schema`], checked by [`from_model`]), and the pattern parser ([`parse`])
//! used when no model is available or its answer is unusable.
//!
//! Pattern grammar (verbs are case-insensitive; `RUN` may be `last`, the session's most
//! recent run):
//!
//! ```text
//! status RUN | list [STATUS] | approve RUN | retry RUN | cancel RUN
//! run RECIPE [KEY=VALUE…]        VALUE is JSON when it parses as JSON, else a string
//! submit RECIPE GOAL…            the rest of the line is the goal
//! config | help
//! ```
//!
//! Words split at white space outside double quotes and JSON brackets, so
//! `run r tasks=[{"argv": ["/usr/bin/echo", "a b"]}]` is one KEY=VALUE.

use machina_core::RunStatus;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};
use std::fmt::Write;

/// The alias for the most recent run of the session.
pub const LAST: &str = "last";

/// Longest partition key the service accepts.
const PARTITION_MAX_CHARS: usize = 128;

/// What the pattern grammar offers, for "try: …" hints and `help`.
pub const GRAMMAR: &str = "status RUN, list [STATUS], approve RUN, retry RUN, cancel RUN, \
run RECIPE [KEY=VALUE…], submit RECIPE GOAL…, config, history, help, quit";

/// One thing to do, as the pattern parser or the model understood a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Submit an intent (the document of POST /enqueue).
    Submit {
        /// Recipe name.
        recipe: String,
        /// What should be achieved, in words.
        goal: String,
        /// The recipe's inputs.
        #[serde(default, deserialize_with = "inputs_object")]
        inputs: Map<String, Value>,
        /// Queue partition (the service's default when absent).
        #[serde(default)]
        partition: Option<String>,
    },
    /// Start a run of a recipe (StartRun).
    Run {
        /// Recipe name.
        recipe: String,
        /// The recipe's inputs.
        #[serde(default, deserialize_with = "inputs_object")]
        inputs: Map<String, Value>,
    },
    /// Show one run (GetRun).
    Status {
        /// Run id or `last`.
        run: String,
    },
    /// List runs, newest first (ListRuns).
    List {
        /// Only runs in this status.
        #[serde(default)]
        status: Option<String>,
    },
    /// Approve a run waiting at its gate, as the caller (ApprovePlan).
    Approve {
        /// Run id or `last`.
        run: String,
    },
    /// Retry a failed run (RetryRun).
    Retry {
        /// Run id or `last`.
        run: String,
    },
    /// Cancel a run (CancelRun).
    Cancel {
        /// Run id or `last`.
        run: String,
    },
    /// Show the effective configuration (GetConfig).
    Config,
    /// Show what the REPL understands.
    Help,
    /// Not something the REPL can do.
    Unknown {
        /// Why, for the operator.
        reason: String,
    },
}

/// Inputs arrive as an object, as a JSON object written as a string (the model's schema
/// cannot describe an open object in strict mode), or as null for none.
fn inputs_object<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(Map::new()),
        Value::Object(m) => Ok(m),
        Value::String(s) if s.trim().is_empty() => Ok(Map::new()),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(D::Error::custom(format!("inputs {s:?} is not a JSON object"))),
        },
        other => Err(D::Error::custom(format!("inputs must be a JSON object, not {other}"))),
    }
}

impl Action {
    /// The run this action names, if it names one.
    pub fn run_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::Status { run } | Self::Approve { run } | Self::Retry { run } | Self::Cancel { run } => Some(run),
            _ => None,
        }
    }

    /// Whether it is answered by the REPL itself, without calling machina.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Help | Self::Unknown { .. })
    }

    /// A one-line description in the pattern grammar's words (`understood: …` lines, history).
    pub fn describe(&self) -> String {
        match self {
            Self::Submit { recipe, goal, inputs, partition } => {
                let mut s = format!("submit {recipe} {goal}");
                if !inputs.is_empty() {
                    let _ = write!(s, " (inputs {})", Value::Object(inputs.clone()));
                }
                if let Some(p) = partition {
                    let _ = write!(s, " (partition {p})");
                }
                s
            }
            Self::Run { recipe, inputs } => {
                let mut s = format!("run {recipe}");
                for (k, v) in inputs {
                    let _ = write!(s, " {k}={v}");
                }
                s
            }
            Self::Status { run } => format!("status {run}"),
            Self::List { status: None } => "list".into(),
            Self::List { status: Some(st) } => format!("list {st}"),
            Self::Approve { run } => format!("approve {run}"),
            Self::Retry { run } => format!("retry {run}"),
            Self::Cancel { run } => format!("cancel {run}"),
            Self::Config => "config".into(),
            Self::Help => "help".into(),
            Self::Unknown { .. } => "unknown".into(),
        }
    }

    /// Checks what the parser cannot express in types: names without spaces, a known
    /// status, a partition key the service would take.
    fn check(self) -> Result<Self, String> {
        let word = |what: &str, v: &str| {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                Err(format!("{what} {v:?} must be one word"))
            } else {
                Ok(())
            }
        };
        match &self {
            Self::Submit { recipe, goal, partition, .. } => {
                word("recipe", recipe)?;
                if goal.trim().is_empty() {
                    return Err("submit needs a goal".into());
                }
                if let Some(p) = partition {
                    check_partition(p)?;
                }
            }
            Self::Run { recipe, .. } => word("recipe", recipe)?,
            Self::Status { run } | Self::Approve { run } | Self::Retry { run } | Self::Cancel { run } => {
                word("run id", run)?
            }
            Self::List { status: Some(st) } => {
                st.parse::<RunStatus>()?;
            }
            Self::List { status: None } | Self::Config | Self::Help | Self::Unknown { .. } => {}
        }
        Ok(self)
    }
}

fn check_partition(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.chars().count() <= PARTITION_MAX_CHARS
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("partition {p:?} must be 1-{PARTITION_MAX_CHARS} characters of [A-Za-z0-9-_.:/]"))
    }
}

/// The JSON Schema of the model's answer: one flat object, every property required and
/// null where the action does not use it (what OpenAI's strict structured output takes).
pub fn schema() -> Value {
    let nullable = |description: &str| json!({"type": ["string", "null"], "description": description});
    let statuses: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    json!({
        "type": "object",
        "properties": {
            "action": {
                "type": "string",
                "enum": ["submit", "run", "status", "list", "approve", "retry", "cancel", "config", "help", "unknown"],
                "description": "what to do",
            },
            "recipe": nullable("submit, run: the recipe's name"),
            "goal": nullable("submit: what should be achieved, in words"),
            "inputs": nullable("submit, run: the recipe's inputs as a JSON object written as a string, e.g. \"{\\\"n\\\": 3}\""),
            "partition": nullable("submit: the queue partition; null for the default"),
            "run": nullable("status, approve, retry, cancel: a run id from the message or the history, or \"last\" for the most recent run of this session"),
            "status": nullable(&format!("list: only runs in this status ({}); null for all", statuses.join(", "))),
            "reason": nullable("unknown: why the message asks for none of the other actions"),
        },
        "required": ["action", "recipe", "goal", "inputs", "partition", "run", "status", "reason"],
        "additionalProperties": false,
    })
}

/// The model's answer as an action, or why it is not one (the judge then asks the next
/// candidate, and without one the pattern parser takes over).
pub fn from_model(answer: &Value) -> Result<Action, String> {
    let mut action: Action = serde_json::from_value(answer.clone()).map_err(|e| format!("not an action: {e}"))?;
    // Nulls and empty strings both mean "not given" for the optional fields.
    match &mut action {
        Action::List { status } => *status = status.take().filter(|s| !s.trim().is_empty()),
        Action::Submit { partition, .. } => *partition = partition.take().filter(|s| !s.trim().is_empty()),
        Action::Unknown { reason } if reason.trim().is_empty() => *reason = "the model gave no reason".into(),
        _ => {}
    }
    action.check()
}

/// The pattern parser: one of the grammar's forms, else [`Action::Unknown`] saying what was
/// wrong. The caller treats an empty line as nothing to do.
pub fn parse(line: &str) -> Action {
    let line = line.trim();
    let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let parsed = match verb.to_ascii_lowercase().as_str() {
        "status" => one_run(rest, "status", |run| Action::Status { run }),
        "approve" => one_run(rest, "approve", |run| Action::Approve { run }),
        "retry" => one_run(rest, "retry", |run| Action::Retry { run }),
        "cancel" => one_run(rest, "cancel", |run| Action::Cancel { run }),
        "list" => list(rest),
        "run" => run(rest),
        "submit" => submit(rest),
        "config" | "help" if !rest.is_empty() => Err(format!("{verb} takes no arguments")),
        "config" => Ok(Action::Config),
        "help" => Ok(Action::Help),
        _ => Err(format!("{line:?} is not a command")),
    };
    match parsed.and_then(Action::check) {
        Ok(a) => a,
        Err(reason) => Action::Unknown { reason },
    }
}

fn one_run(rest: &str, verb: &str, make: fn(String) -> Action) -> Result<Action, String> {
    match words(rest)?.as_slice() {
        [run] => Ok(make(run.clone())),
        [] => Err(format!("{verb} needs a run id: {verb} RUN (or {verb} {LAST})")),
        _ => Err(format!("{verb} takes one run id: {verb} RUN")),
    }
}

fn list(rest: &str) -> Result<Action, String> {
    match words(rest)?.as_slice() {
        [] => Ok(Action::List { status: None }),
        [status] => Ok(Action::List { status: Some(status.to_ascii_lowercase()) }),
        _ => Err("list takes at most one status: list [STATUS]".into()),
    }
}

fn run(rest: &str) -> Result<Action, String> {
    let words = words(rest)?;
    let Some((recipe, pairs)) = words.split_first() else {
        return Err("run needs a recipe: run RECIPE [KEY=VALUE…]".into());
    };
    let mut inputs = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(format!("{p:?} is not KEY=VALUE: run RECIPE [KEY=VALUE…]"));
        };
        inputs.insert(k.to_string(), serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())));
    }
    Ok(Action::Run { recipe: recipe.clone(), inputs })
}

fn submit(rest: &str) -> Result<Action, String> {
    let (recipe, goal) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if recipe.is_empty() || goal.trim().is_empty() {
        return Err("submit needs a recipe and a goal: submit RECIPE GOAL…".into());
    }
    Ok(Action::Submit { recipe: recipe.into(), goal: goal.trim().into(), inputs: Map::new(), partition: None })
}

/// Splits at white space outside double quotes and `[…]`/`{…}`, so JSON values stay whole.
fn words(text: &str) -> Result<Vec<String>, String> {
    let (mut out, mut cur) = (Vec::new(), String::new());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in text.chars() {
        if quoted {
            cur.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' => depth += 1,
            ']' | '}' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if quoted || depth > 0 {
        return Err(format!("unbalanced quote or bracket in {text:?}"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// What `help` prints.
pub fn help_text() -> String {
    format!(
        "Say what you want done, or use these commands (RUN may be \"{LAST}\", the most recent run here):\n\
         \x20 status RUN                 show a run and its progress\n\
         \x20 list [STATUS]              list runs, newest first\n\
         \x20 approve RUN                approve a run waiting at its gate, as you\n\
         \x20 retry RUN                  retry a failed run from its failed step\n\
         \x20 cancel RUN                 cancel a run\n\
         \x20 run RECIPE [KEY=VALUE…]    start a run (VALUE is JSON when it parses as JSON)\n\
         \x20 submit RECIPE GOAL…        submit an intent with a goal in words\n\
         \x20 config                     show the effective configuration\n\
         \x20 history                    show this session's messages\n\
         \x20 quit                       leave (so does end of input)\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown_reason(line: &str) -> String {
        match parse(line) {
            Action::Unknown { reason } => reason,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_form_parses() {
        let run = |r: &str| r.to_string();
        assert_eq!(parse("status 0191abc"), Action::Status { run: run("0191abc") });
        assert_eq!(parse("  STATUS   last "), Action::Status { run: run("last") });
        assert_eq!(parse("approve 0191abc"), Action::Approve { run: run("0191abc") });
        assert_eq!(parse("retry x"), Action::Retry { run: run("x") });
        assert_eq!(parse("cancel x"), Action::Cancel { run: run("x") });
        assert_eq!(parse("list"), Action::List { status: None });
        assert_eq!(parse("list Waiting_Input"), Action::List { status: Some("waiting_input".into()) });
        assert_eq!(parse("config"), Action::Config);
        assert_eq!(parse("Help"), Action::Help);
        assert_eq!(
            parse("submit demo greet the team, then report"),
            Action::Submit {
                recipe: "demo".into(),
                goal: "greet the team, then report".into(),
                inputs: Map::new(),
                partition: None
            }
        );
    }

    #[test]
    fn run_takes_json_or_string_values_and_keeps_json_whole() {
        let a = parse(r#"run sandbox-default tasks=[{"argv": ["/usr/bin/echo", "a b"]}] n=3 who=ada msg="x y""#);
        let Action::Run { recipe, inputs } = a else { panic!("{a:?}") };
        assert_eq!(recipe, "sandbox-default");
        assert_eq!(
            Value::Object(inputs),
            json!({"tasks": [{"argv": ["/usr/bin/echo", "a b"]}], "n": 3, "who": "ada", "msg": "x y"})
        );
        assert_eq!(parse("run demo"), Action::Run { recipe: "demo".into(), inputs: Map::new() });
    }

    #[test]
    fn bad_input_is_unknown_with_a_helpful_reason() {
        for (line, want) in [
            ("status", "status needs a run id: status RUN (or status last)"),
            ("approve a b", "approve takes one run id"),
            ("list a b", "list takes at most one status"),
            ("list sleeping", "expected one of: queued, compiling, waiting_input"),
            ("run", "run needs a recipe"),
            ("run demo novalue", "\"novalue\" is not KEY=VALUE"),
            ("run demo =x", "is not KEY=VALUE"),
            ("run demo tasks=[{\"argv\": 1}", "unbalanced"),
            ("submit demo", "submit needs a recipe and a goal"),
            ("config now", "config takes no arguments"),
            ("what is running?", "\"what is running?\" is not a command"),
        ] {
            let reason = unknown_reason(line);
            assert!(reason.contains(want), "{line:?}: {reason}");
        }
    }

    #[test]
    fn descriptions_read_like_the_grammar() {
        assert_eq!(parse("run demo n=3 s=hi").describe(), "run demo n=3 s=\"hi\"");
        assert_eq!(parse("list failed").describe(), "list failed");
        assert_eq!(parse("approve last").describe(), "approve last");
        let s = Action::Submit {
            recipe: "demo".into(),
            goal: "g".into(),
            inputs: json!({"a": 1}).as_object().unwrap().clone(),
            partition: Some("team-a".into()),
        };
        assert_eq!(s.describe(), "submit demo g (inputs {\"a\":1}) (partition team-a)");
    }

    #[test]
    fn model_answers_become_actions_with_nulls_ignored() {
        let nulls = |action: &str| {
            json!({"action": action, "recipe": null, "goal": null, "inputs": null, "partition": null,
                   "run": null, "status": null, "reason": null})
        };
        assert_eq!(from_model(&nulls("list")).unwrap(), Action::List { status: None });
        assert_eq!(from_model(&nulls("config")).unwrap(), Action::Config);
        let mut v = nulls("run");
        v["recipe"] = json!("demo");
        v["inputs"] = json!("{\"n\": 3}");
        assert_eq!(
            from_model(&v).unwrap(),
            Action::Run { recipe: "demo".into(), inputs: json!({"n": 3}).as_object().unwrap().clone() }
        );
        let mut v = nulls("submit");
        v["recipe"] = json!("demo");
        v["goal"] = json!("say hi");
        v["partition"] = json!("");
        assert!(matches!(from_model(&v).unwrap(), Action::Submit { partition: None, .. }));
        let mut v = nulls("list");
        v["status"] = json!("");
        assert_eq!(from_model(&v).unwrap(), Action::List { status: None });
    }

    #[test]
    fn unusable_model_answers_say_why() {
        let bad = [
            (json!({"action": "status", "run": null}), "not an action"),
            (json!({"action": "reboot"}), "not an action"),
            (json!({"action": "run", "recipe": "demo", "inputs": "[1]"}), "not a JSON object"),
            (json!({"action": "approve", "run": "two words"}), "must be one word"),
            (json!({"action": "list", "status": "sleeping"}), "expected one of"),
            (json!({"action": "submit", "recipe": "d", "goal": "g", "partition": "a b"}), "partition"),
        ];
        for (answer, want) in bad {
            let e = from_model(&answer).unwrap_err();
            assert!(e.contains(want), "{answer}: {e}");
        }
    }

    #[test]
    fn the_schema_closes_the_object_and_requires_every_property() {
        let s = schema();
        assert_eq!(s["additionalProperties"], false);
        let props: Vec<&String> = s["properties"].as_object().unwrap().keys().collect();
        let required: Vec<&str> = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(props.len(), required.len());
        assert!(props.iter().all(|p| required.contains(&p.as_str())));
        // Every action the schema offers deserializes.
        for a in s["properties"]["action"]["enum"].as_array().unwrap() {
            let v = json!({"action": a, "recipe": "r", "goal": "g", "inputs": "{}", "partition": null,
                           "run": "x", "status": null, "reason": "why"});
            assert!(from_model(&v).is_ok(), "{a}");
        }
    }
}
