//! machina-daemon: what every machina process does the same way — set up
//! logging, run its async main on a runtime, turn SIGTERM/SIGINT into a
//! cancellation, and exit with a status chosen on purpose (78 for
//! configuration errors, so systemd's RestartPreventExitStatus=78 stops a
//! restart loop).

use machina_core::config::{ConfigError, EXIT_CONFIG};
use std::future::Future;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Log to stderr (journald collects it under systemd); `MACHINA_LOG` sets the filter.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MACHINA_LOG").unwrap_or_else(|_| "info".into());
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
