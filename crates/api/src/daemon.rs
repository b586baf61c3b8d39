//! The `machina-api` process: settings, token, ledger, listener, graceful shutdown.

use anyhow::Context;
use clap::Parser;
use machina_core::config::{ConfigError, Settings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Name of the systemd credential holding the API token.
pub const TOKEN_CREDENTIAL: &str = "api-token";
/// Shortest token accepted.
pub const TOKEN_MIN_LEN: usize = 16;

/// Command line of machina-api.
#[derive(Debug, Parser)]
#[command(name = "machina-api", version, about = "machina's HTTP API")]
pub struct Args {
    /// Configuration and state directories.
    #[command(flatten)]
    pub paths: machina_daemon::PathArgs,
    /// Address to listen on (overrides api.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging();
    let args = Args::parse();
    machina_daemon::run("machina-api", run(args))
}

/// Read the bearer token: `api.token_file`, else the `api-token` systemd credential.
pub fn load_token(settings: &Settings, credentials_dir: Option<PathBuf>) -> Result<String, ConfigError> {
    let path = match (&settings.api.token_file, credentials_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => dir.join(TOKEN_CREDENTIAL),
        (None, None) => {
            return Err(ConfigError(format!(
                "no API token: set api.token_file, or pass the {TOKEN_CREDENTIAL} credential (LoadCredential=)"
            )));
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError(format!("API token {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.len() < TOKEN_MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError(format!(
            "API token in {} must be at least {TOKEN_MIN_LEN} printable characters without spaces",
            path.display()
        )));
    }
    Ok(token)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (listen, paths) = (args.listen, args.paths);
    let (setup, token) = tokio::task::spawn_blocking(move || {
        let setup = machina_daemon::setup(paths, |s| {
            if let Some(l) = listen {
                s.api.listen = l;
            }
        })?;
        let token = load_token(&setup.settings, std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))?;
        anyhow::Ok((setup, token))
    })
    .await??;
    let machina_daemon::Setup { settings, recipes, ledger } = setup;
    let listener = tokio::net::TcpListener::bind(&settings.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.api.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = AppState {
        ledger,
        recipes: Arc::new(recipes),
        settings: Arc::new(settings),
        token: Arc::new(token),
        shutdown: shutdown.clone(),
    };
    let signals = tokio::spawn(machina_daemon::cancel_on_signal(shutdown.clone(), "draining in-flight requests"));
    tracing::info!(%addr, "machina-api listening");
    let served = serve(listener, state, shutdown).await;
    signals.abort();
    served
}

/// Serve until `shutdown` is cancelled, then drain in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = crate::router(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    tracing::info!("machina-api stopped");
    Ok(())
}
