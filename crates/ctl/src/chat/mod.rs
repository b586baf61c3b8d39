//! `machinactl chat`: a REPL over the same D-Bus methods as the other commands.
//!
//! Each message goes through three phases, each under its own time limit:
//! 1. understanding: the judge model turns it into an [`Action`] ([`model`]); without a
//!    model, or when it fails, is too slow or answers nonsense, the pattern parser does
//!    ([`action::parse`]) and a note in parentheses says why;
//! 2. execution through the D-Bus proxy ([`execute`]): the bus policy, the caller check and
//!    the approval gate apply exactly as to `machinactl approve`; errors are shown and the
//!    REPL goes on;
//! 3. a one-line summary: the model's, or a template's ([`summary`]) without a model, when
//!    phase 1 could not use it, when it fails or is too slow, and always for `config`.
//!
//! Output is plain lines with no times in them, so the same input against the same state and
//! fixtures gives the same transcript. `history`, `quit`/`exit` (and end of input) are the
//! REPL's own; `last` stands for the session's most recent run.

pub mod action;
mod execute;
mod history;
mod model;
mod summary;

use clap::ValueEnum;
use machina_bus::Manager1Proxy;
use machina_planner::llm::JudgeMode;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

use crate::exit::{self, CtlError};
use action::{Action, GRAMMAR, LAST};
use execute::{Refusal, Reply};
use history::History;
use model::Model;

/// `--mode`: overrides `judge.mode` for this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Ask the model's provider.
    Live,
    /// Ask the provider and store each exchange as a fixture.
    Record,
    /// Answer only from stored fixtures (no network, no credentials).
    Replay,
}

impl From<ModeArg> for JudgeMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Live => Self::Live,
            ModeArg::Record => Self::Record,
            ModeArg::Replay => Self::Replay,
        }
    }
}

/// How the session runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Drop-in directories the judge's settings are read from (empty: the system's).
    pub config_dirs: Vec<PathBuf>,
    /// Overrides `judge.mode`.
    pub mode: Option<ModeArg>,
    /// Time limit of each phase of a message.
    pub phase_timeout: Duration,
    /// Parse by pattern and summarize from templates, without asking a model.
    pub no_llm: bool,
}

/// Runs the REPL until `quit`, `exit` or end of input (exit status 0).
pub async fn run(proxy: &Manager1Proxy<'_>, opts: Options) -> Result<u8, CtlError> {
    let model = if opts.no_llm {
        Err("--no-llm".to_string())
    } else {
        model::load(opts.config_dirs, opts.mode.map(Into::into)).await
    };
    match &model {
        Ok(m) => {
            println!("(the model {} reads your messages and sums up results; type \"help\" for commands)", m.name())
        }
        Err(why) => println!(
            "(no language model: {why}; commands are parsed by pattern and results summed up from templates; type \"help\")"
        ),
    }
    let mut session = Session {
        proxy,
        model: model.ok(),
        phase_timeout: opts.phase_timeout,
        history: History::default(),
        last_run: None,
    };
    let interactive = std::io::stdin().is_terminal();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        if interactive {
            print!("machina> ");
            let _ = std::io::stdout().flush();
        }
        let read = lines.next_line().await.map_err(|e| CtlError::new(exit::FAILED, format!("standard input: {e}")))?;
        let Some(line) = read else {
            if interactive {
                println!();
            }
            break;
        };
        let line = line.trim();
        match line.to_ascii_lowercase().as_str() {
            "" => {}
            "quit" | "exit" => break,
            "history" => print!("{}", session.history.render()),
            // Exactly "help" needs no model to understand it.
            "help" => session.help(line),
            _ => session.handle(line).await,
        }
    }
    Ok(exit::OK)
}

/// One session's state.
struct Session<'a> {
    proxy: &'a Manager1Proxy<'a>,
    model: Option<Model>,
    phase_timeout: Duration,
    history: History,
    /// What `last` stands for: the run the latest reply was about.
    last_run: Option<String>,
}

impl Session<'_> {
    /// The three phases of one message.
    async fn handle(&mut self, said: &str) {
        let (understood, model_answered) = self.understand(said).await;
        let action = self.resolve_last(understood);
        match &action {
            Action::Help => return self.help(said),
            Action::Unknown { reason } => {
                println!("I did not understand: {reason}; try: {GRAMMAR}");
                self.history.push(said, action.describe(), reason.clone());
                return;
            }
            _ => println!("understood: {}", action.describe()),
        }
        let result = match tokio::time::timeout(self.phase_timeout, execute::execute(self.proxy, &action)).await {
            Ok(r) => r,
            Err(_) => Err(Refusal {
                kind: "Timeout".into(),
                message: format!(
                    "no answer within {} s; it may still happen: check with \"list\"",
                    self.phase_timeout.as_secs()
                ),
            }),
        };
        match &result {
            Ok(reply) => {
                print!("{}", reply.text);
                if let Some(id) = execute::run_record(&reply.doc)["id"].as_str() {
                    self.last_run = Some(id.to_string());
                }
            }
            Err(refusal) => println!("{}", refusal.line()),
        }
        let summary = self.summarize(said, &action, &result, model_answered).await;
        println!("summary: {summary}");
        self.history.push(said, action.describe(), summary);
    }

    fn help(&mut self, said: &str) {
        print!("{}", action::help_text());
        self.history.push(said, Action::Help.describe(), "shown the commands".into());
    }

    /// Phase 1. Also says whether the model answered, so phase 3 does not wait a second
    /// time on a model that just failed.
    async fn understand(&self, said: &str) -> (Action, bool) {
        let Some(model) = &self.model else { return (action::parse(said), false) };
        match tokio::time::timeout(self.phase_timeout, model.intent(said, &self.history)).await {
            Ok(Ok(Action::Unknown { reason })) => match action::parse(said) {
                Action::Unknown { .. } => (Action::Unknown { reason }, true),
                parsed => {
                    println!("(parsed without the model: it did not recognise the message: {reason})");
                    (parsed, true)
                }
            },
            Ok(Ok(understood)) => (understood, true),
            Ok(Err(failure)) => {
                println!("{}", model::failure_note("parsed", &failure));
                (action::parse(said), false)
            }
            Err(_) => {
                println!(
                    "(parsed without the model: it took longer than {} s (--phase-timeout-secs))",
                    self.phase_timeout.as_secs()
                );
                (action::parse(said), false)
            }
        }
    }

    /// `last` becomes the session's most recent run, or the action becomes unknown.
    fn resolve_last(&self, mut action: Action) -> Action {
        let Some(run) = action.run_mut().filter(|r| r.eq_ignore_ascii_case(LAST)) else { return action };
        match &self.last_run {
            Some(id) => {
                *run = id.clone();
                action
            }
            None => Action::Unknown {
                reason: format!("\"{LAST}\" names no run yet in this session; name the run id (see \"list\")"),
            },
        }
    }

    /// Phase 3. The configuration is summed up from the template: the model could add
    /// nothing, and the host's configuration stays off the provider's servers.
    async fn summarize(&self, said: &str, action: &Action, result: &Result<Reply, Refusal>, ask: bool) -> String {
        let ask = ask && *action != Action::Config;
        let Some(model) = self.model.as_ref().filter(|_| ask) else { return summary::template(action, result) };
        match tokio::time::timeout(self.phase_timeout, model.summary(said, action, result)).await {
            Ok(Ok(text)) => text,
            Ok(Err(failure)) => {
                println!("{}", model::failure_note("summed up", &failure));
                summary::template(action, result)
            }
            Err(_) => {
                println!(
                    "(summed up without the model: it took longer than {} s (--phase-timeout-secs))",
                    self.phase_timeout.as_secs()
                );
                summary::template(action, result)
            }
        }
    }
}
