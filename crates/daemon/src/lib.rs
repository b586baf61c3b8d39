//! machina-daemon: what every machina process does the same way — set up
//! logging, run its async main on a runtime, turn SIGTERM/SIGINT into a
//! cancellation, and exit with a status chosen on purpose (78 for
//! configuration errors, so systemd's RestartPreventExitStatus=78 stops a
//! restart loop) — and load what both daemons start from: settings, recipes, the ledger.

use anyhow::Context;
use machina_core::RecipeBook;
use machina_core::config::{ConfigError, DaemonPaths, EXIT_CONFIG, Settings};
use machina_ledger::{Ledger, LedgerOptions};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub mod notify;

/// Where journald listens for native log records.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Log to journald (structured fields: RUN_ID, TASK_KEY, REQUEST_ID, STEP, ERR_CODE, WORKER,
/// MESSAGE_ID…) when its socket exists, else to stderr — never both. `MACHINA_LOG` sets the
/// filter (default `info`); `MACHINA_LOG_TARGET=stderr|journal` overrides the choice.
pub fn init_logging(identifier: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MACHINA_LOG").unwrap_or_else(|_| "info".into());
    let target = std::env::var("MACHINA_LOG_TARGET").ok();
    let want_journal = match target.as_deref() {
        Some("journal") => true,
        Some("stderr") => false,
        _ => std::path::Path::new(JOURNAL_SOCKET).exists(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_field_prefix(None).with_syslog_identifier(identifier.to_string());
                let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
                return;
            }
            Err(e) => eprintln!("{identifier}: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Run `main` on a multi-threaded runtime; print the error chain once and map it to an exit status.
pub fn run(name: &str, main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

/// Cancel `token` on SIGTERM or SIGINT; `what` says in the log what cancelling means.
pub async fn cancel_on_signal(token: CancellationToken, what: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: {what}"),
        _ = int.recv() => tracing::info!("SIGINT: {what}"),
        _ = token.cancelled() => return,
    }
    token.cancel();
}

/// Command-line options every daemon takes (flattened into each one's arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct PathArgs {
    /// Configuration drop-in directory (repeatable; default: the system directories).
    #[arg(long = "config-dir")]
    pub config_dirs: Vec<PathBuf>,
    /// State directory (overrides STATE_DIRECTORY and the configuration).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// What a daemon starts from.
pub struct Setup {
    /// Validated settings.
    pub settings: Settings,
    /// Built-in recipes plus those in `recipe_dirs`.
    pub recipes: RecipeBook,
    /// The opened (migrated) ledger.
    pub ledger: Ledger,
}

/// Load settings (drop-ins, `STATE_DIRECTORY`, the command line), then `adjust` them,
/// then the recipes, and open the ledger. Blocking: call it from `spawn_blocking`.
/// Configuration problems come back as [`ConfigError`] (exit 78).
pub fn setup(paths: PathArgs, adjust: impl FnOnce(&mut Settings)) -> anyhow::Result<Setup> {
    let paths = DaemonPaths {
        config_dirs: paths.config_dirs,
        state_dir: paths.state_dir,
        systemd_state_directory: std::env::var("STATE_DIRECTORY").ok(),
    };
    let mut settings = Settings::load_for_daemon(&paths)?;
    adjust(&mut settings);
    let recipes = RecipeBook::load(&settings.recipe_dirs).map_err(|e| ConfigError(e.to_string()))?;
    let mut opts = LedgerOptions::new(&settings.state_dir);
    opts.retry = settings.retry.clone();
    opts.durability = match settings.ledger.synchronous.as_str() {
        "full" => machina_ledger::Durability::Full,
        _ => machina_ledger::Durability::Normal,
    };
    let ledger = Ledger::open(opts).context("opening the ledger")?;
    Ok(Setup { settings, recipes, ledger })
}
