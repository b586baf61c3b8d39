//! The `machina-worker` process.

use clap::Parser;
use machina_bus::BusAddress;
use machina_core::config::ConfigError;
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
    /// Configuration and state directories.
    #[command(flatten)]
    pub paths: machina_daemon::PathArgs,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging("machina-worker");
    let args = Args::parse();
    machina_daemon::run("machina-worker", run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.id.is_empty() || !args.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) {
        return Err(ConfigError(format!("--id {:?} must be non-empty [A-Za-z0-9-_.@]", args.id)).into());
    }
    let paths = args.paths.clone();
    let machina_daemon::Setup { settings, recipes, ledger } =
        tokio::task::spawn_blocking(move || machina_daemon::setup(paths, |_| {})).await??;
    let address = BusAddress::parse(&settings.bus.address).map_err(ConfigError)?;
    // The bus only brings wake-ups: without it the worker still works, on its poll.
    let bus = match machina_bus::connect(&address).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(bus = %address, "cannot connect to the bus, polling every {} ms: {e}", settings.worker.poll_ms);
            None
        }
    };
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(machina_daemon::cancel_on_signal(shutdown.clone(), "finishing in-flight tasks"));
    tracing::info!(
        message_id = machina_core::log::MSG_SERVICE_READY,
        worker = %args.id,
        slots = args.slots,
        bus = %address,
        "machina-worker ready"
    );
    // Building the tools reads files (allowlist, plugin manifests and binaries, resolver and
    // TLS roots): off the async threads.
    let id = args.id.clone();
    let mut worker = tokio::task::spawn_blocking(move || Worker::new(id, ledger, recipes, settings)).await?;
    if let Some(bus) = bus {
        worker = worker.with_bus(bus);
    }
    machina_daemon::notify::ready(&format!("worker {} claiming with {} slot(s)", args.id, args.slots));
    let result = worker.run(args.slots, shutdown).await;
    machina_daemon::notify::stopping();
    signals.abort();
    Ok(result?)
}
