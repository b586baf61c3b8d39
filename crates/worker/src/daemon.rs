//! The `machina-worker` process.

use anyhow::Context;
use clap::Parser;
use machina_core::RecipeBook;
use machina_core::config::{ConfigError, DaemonPaths, Settings};
use machina_ledger::{Ledger, LedgerOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use crate::Worker;

/// Command line of machina-worker.
#[derive(Debug, Parser)]
#[command(name = "machina-worker", version, about = "machina's worker process")]
pub struct Args {
    /// Worker id, used as lease owner (the systemd instance name, e.g. 1).
    #[arg(long)]
    pub id: String,
    /// Tasks this process runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Configuration drop-in directory (repeatable; default: the system directories).
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// State directory (overrides STATE_DIRECTORY and the configuration).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging();
    let args = Args::parse();
    machina_daemon::run("machina-worker", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.id.is_empty() || !args.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(ConfigError(format!("--id {:?} must be non-empty [A-Za-z0-9-_.@]", args.id)).into());
    }
    let paths = DaemonPaths {
        config_dirs: args.config_dirs,
        state_dir: args.state_dir,
        systemd_state_directory: std::env::var("STATE_DIRECTORY").ok(),
    };
    let settings = Settings::load_for_daemon(&paths)?;
    let recipes = RecipeBook::load(settings.recipes_dir.as_deref()).map_err(|e| ConfigError(e.to_string()))?;
    let mut opts = LedgerOptions::new(&settings.state_dir);
    opts.retry = settings.retry.clone();
    let ledger = tokio::task::spawn_blocking(move || Ledger::open(opts)).await?.context("opening the ledger")?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(machina_daemon::cancel_on_signal(shutdown.clone(), "finishing in-flight tasks"));
    tracing::info!(worker = %args.id, slots = args.slots, "machina-worker started");
    Worker::new(args.id, ledger, recipes, settings).run(args.slots, shutdown).await?;
    signals.abort();
    Ok(())
}
