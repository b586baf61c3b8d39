//! The `machina-snapshot` binary: the daily timer's job (`run`) and the operator's
//! commands (`machinactl snapshot …` runs this binary).

use anyhow::Context;
use clap::{Parser, Subcommand};
use machina_core::config::{ConfigError, DaemonPaths, EXIT_CONFIG, Settings};
use machina_core::snapshot_request::{self as channel, SnapshotOp, SnapshotResult};
use std::path::PathBuf;
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
    /// Answer the requests the API queued in DIR (D-Bus CreateSnapshot, ListSnapshots, …);
    /// started by machina-snapshot-requests.path.
    ServeRequests {
        /// The request directory (owned by the API's user).
        #[arg(long, default_value = "/run/machina/snapshot-requests")]
        requests: PathBuf,
        /// The answer directory (root-owned, readable by the API's group).
        #[arg(long, default_value = "/run/machina-snapshot-results")]
        results: PathBuf,
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
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for an error, the same as machinactl's: 78 configuration, 3 not found,
/// 4 illegal state (pinned, another backend's snapshot), 65 invalid input, 69 unavailable
/// (locked, disk full), 1 anything else.
fn exit_status(e: &anyhow::Error) -> u8 {
    use machina_core::ErrorKind as K;
    if e.downcast_ref::<ConfigError>().is_some() {
        return EXIT_CONFIG;
    }
    match e.downcast_ref::<SnapshotError>().map(SnapshotError::kind) {
        Some(K::NotFound) => 3,
        Some(K::IllegalState) => 4,
        Some(K::InvalidInput | K::InvalidRequest) => 65,
        Some(K::Unavailable) => 69,
        _ => 1,
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
    let opened = Snapshots::open(config_from(&settings)?);
    if let (Command::ServeRequests { requests, results }, Err(e)) = (&args.command, &opened) {
        // Answer what is queued with the reason, or the callers wait in vain and the path
        // unit starts this again and again.
        refuse_requests(requests, results, e)?;
    }
    let snaps = opened?;
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
        Command::ServeRequests { requests, results } => {
            let served = serve_requests(&snaps, requests, results)?;
            print(&served, format!("{served} request(s) answered\n"));
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

/// Answer every pending request in `dir` with `error`.
fn refuse_requests(dir: &std::path::Path, results: &std::path::Path, error: &SnapshotError) -> anyhow::Result<()> {
    for req in channel::pending(dir).with_context(|| format!("reading requests in {}", dir.display()))? {
        let result = SnapshotResult {
            id: req.id.clone(),
            ok: None,
            error_kind: Some(error.kind().as_str().to_string()),
            error: Some(error.to_string()),
        };
        channel::answer(dir, results, &result)?;
    }
    Ok(())
}

/// Answer every pending request in `dir`; returns how many.
fn serve_requests(snaps: &Snapshots, dir: &std::path::Path, results: &std::path::Path) -> anyhow::Result<usize> {
    channel::remove_stale_results(results).with_context(|| format!("cleaning {}", results.display()))?;
    let pending = channel::pending(dir).with_context(|| format!("reading requests in {}", dir.display()))?;
    for req in &pending {
        tracing::info!(request = %req.id, requested_by = %req.requested_by, op = ?req.op, "snapshot request");
        let now = jiff::Timestamp::now();
        let done: Result<serde_json::Value, SnapshotError> = match &req.op {
            SnapshotOp::List => snaps.list().map(|l| serde_json::json!(l)),
            SnapshotOp::Create { label } => {
                snaps.create(Kind::Manual, label.as_deref(), now).map(|o| serde_json::json!(o))
            }
            SnapshotOp::Pin { snapshot, pinned } => snaps.pin(snapshot, *pinned).map(|m| serde_json::json!(m)),
            SnapshotOp::Delete { snapshot } => snaps.delete(snapshot).map(|m| serde_json::json!(m)),
        };
        let result = match done {
            Ok(v) => SnapshotResult { id: req.id.clone(), ok: Some(v), error_kind: None, error: None },
            Err(e) => SnapshotResult {
                id: req.id.clone(),
                ok: None,
                error_kind: Some(e.kind().as_str().to_string()),
                error: Some(e.to_string()),
            },
        };
        channel::answer(dir, results, &result).with_context(|| format!("answering request {}", req.id))?;
    }
    Ok(pending.len())
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
