//! The `machina-snapshot` binary: the daily timer's job (`run`) and the operator's
//! commands (`machinactl snapshot …` runs this binary).

use anyhow::Context;
use clap::{Parser, Subcommand};
use machina_core::config::{ConfigError, DaemonPaths, EXIT_CONFIG, Settings};
use std::process::ExitCode;

use crate::services;
use crate::{BackendChoice, Cadence, CreateOutcome, Kind, RetentionPolicy, SnapshotConfig, SnapshotError, Snapshots};

/// Command line of machina-snapshot.
#[derive(Debug, Parser)]
#[command(name = "machina-snapshot", version, about = "Snapshots of machina's state: create, list, pin, restore")]
pub struct Args {
    /// Configuration and state directories.
    #[command(flatten)]
    pub paths: machina_daemon::PathArgs,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// machina-snapshot's commands (the same as `machinactl snapshot …`).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// The timer's job: a scheduled snapshot if none was taken this local day (or week), then retention.
    Run,
    /// A manual snapshot (kept apart from scheduled ones).
    Create {
        /// A label to recognise it by.
        #[arg(long)]
        label: Option<String>,
    },
    /// List snapshots, oldest first.
    List,
    /// Keep a snapshot whatever retention says.
    Pin {
        /// Snapshot id.
        id: String,
    },
    /// Let retention delete a snapshot again.
    Unpin {
        /// Snapshot id.
        id: String,
    },
    /// Delete a snapshot (not a pinned one).
    Delete {
        /// Snapshot id.
        id: String,
    },
    /// Replace the state with a snapshot's; the replaced state is kept as a snapshot.
    Restore {
        /// Snapshot id.
        id: String,
        /// Stop the running machina units first, and start them again afterwards.
        #[arg(long)]
        stop: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging("machina-snapshot");
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machina-snapshot: {e:#}");
            let config = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<SnapshotError>().is_some_and(|s| s.kind() == machina_core::ErrorKind::InvalidInput);
            ExitCode::from(if config { EXIT_CONFIG } else { 1 })
        }
    }
}

/// The snapshot configuration the settings describe.
pub fn config_from(settings: &Settings) -> Result<SnapshotConfig, ConfigError> {
    let s = &settings.snapshot;
    let mut cfg = SnapshotConfig::new(&settings.state_dir);
    if let Some(dir) = &s.dir {
        cfg.snapshot_dir = dir.clone();
    }
    cfg.backend = match s.backend.as_str() {
        "btrfs" => BackendChoice::Btrfs,
        "copy" => BackendChoice::Copy,
        _ => BackendChoice::Auto,
    };
    let cadence = if s.cadence == "weekly" { Cadence::Weekly } else { Cadence::Daily };
    cfg.policy = RetentionPolicy { cadence, keep_scheduled: s.keep_scheduled, keep_manual: s.keep_manual };
    Ok(cfg)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let paths = DaemonPaths {
        config_dirs: args.paths.config_dirs.clone(),
        state_dir: args.paths.state_dir.clone(),
        systemd_state_directory: std::env::var("STATE_DIRECTORY").ok(),
    };
    let settings = Settings::load_for_daemon(&paths)?;
    let snaps = Snapshots::open(config_from(&settings)?)?;
    let now = jiff::Timestamp::now();
    let print = |v: &dyn erased::Json, text: String| {
        if args.json {
            println!("{}", v.json());
        } else {
            print!("{text}");
        }
    };
    match &args.command {
        Command::Run => {
            let r = snaps.run_scheduled(now)?;
            let text = format!("{}{} pruned\n", outcome_line(&r.outcome, snaps.backend()), r.pruned.len());
            print(&r, text);
        }
        Command::Create { label } => {
            let o = snaps.create(Kind::Manual, label.as_deref(), now)?;
            let text = outcome_line(&o, snaps.backend());
            print(&o, text);
        }
        Command::List => {
            let list = snaps.list()?;
            let mut text = format!("backend: {} ({})\n", snaps.backend(), snaps.config().snapshot_dir.display());
            for m in &list {
                text.push_str(&format!(
                    "{:<36} {:<11} {} {:>12} bytes {}{}\n",
                    m.id,
                    m.kind.as_str(),
                    m.local_day,
                    m.size_bytes,
                    if m.pinned { "pinned " } else { "" },
                    m.label.as_deref().unwrap_or("")
                ));
            }
            text.push_str(&format!("{} snapshot(s)\n", list.len()));
            print(&list, text);
        }
        Command::Pin { id } | Command::Unpin { id } => {
            let pinned = matches!(args.command, Command::Pin { .. });
            let m = snaps.pin(id, pinned)?;
            print(&m, format!("{} {}\n", m.id, if pinned { "pinned" } else { "unpinned" }));
        }
        Command::Delete { id } => {
            let m = snaps.delete(id)?;
            print(&m, format!("{} deleted\n", m.id));
        }
        Command::Restore { id, stop } => {
            snaps.get(id).with_context(|| format!("snapshot {id}"))?;
            let stopped = services::stop_for_restore(*stop)?;
            let result = snaps.restore(id, now);
            let restarted = services::start_again(&stopped);
            let r = result?;
            restarted?;
            let text = format!(
                "restored {} ({}); the replaced state is snapshot {}\n",
                r.restored.id,
                if r.exchange == crate::Exchange::Atomic { "atomic exchange" } else { "two renames" },
                r.pre_restore.as_ref().map_or("-", |m| m.id.as_str())
            );
            print(&r, text);
        }
    }
    Ok(())
}

fn outcome_line(o: &CreateOutcome, backend: crate::Backend) -> String {
    match o {
        CreateOutcome::Created(m) => format!("created {} ({backend}, {} bytes)\n", m.id, m.size_bytes),
        CreateOutcome::AlreadyDone(m) => format!("nothing to do: {} already covers this period\n", m.id),
        CreateOutcome::Locked => "nothing to do: another snapshot run holds the lock\n".to_string(),
    }
}

/// Serialize anything printable as JSON without naming its type at the call site.
mod erased {
    /// A value `--json` can print.
    pub trait Json {
        /// The value as JSON.
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        }
    }
}
