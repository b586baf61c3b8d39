//! The `machina-api` process: settings, token, ledger, listeners (socket
//! activation), the D-Bus name, sd_notify (READY/STATUS/WATCHDOG/STOPPING),
//! the idle exit, and graceful shutdown.

use anyhow::Context;
use clap::Parser;
use machina_bus::BusAddress;
use machina_core::config::{ConfigError, Settings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;
use crate::activity::Activity;
use crate::listeners::{self, Listener};
use crate::ratelimit::ClientAddr;

/// Name of the systemd credential holding the API token.
pub const TOKEN_CREDENTIAL: &str = "api-token";
/// Shortest token accepted.
pub const TOKEN_MIN_LEN: usize = 16;
/// Name of the systemd credential holding the HMAC secret.
pub const HMAC_CREDENTIAL: &str = "api-hmac-secret";
/// How often the idle watcher looks and STATUS= is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Command line of machina-api.
#[derive(Debug, Parser)]
#[command(name = "machina-api", version, about = "machina's HTTP API and D-Bus service")]
pub struct Args {
    /// Configuration and state directories.
    #[command(flatten)]
    pub paths: machina_daemon::PathArgs,
    /// Address to listen on when systemd passes no socket (overrides api.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging("machina-api");
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

/// Read the HMAC secret: `api.hmac_secret_file`, else the `api-hmac-secret` credential
/// (at least 32 bytes, surrounding whitespace ignored).
pub fn load_hmac_secret(settings: &Settings, credentials_dir: Option<PathBuf>) -> Result<Vec<u8>, ConfigError> {
    let path = match (&settings.api.hmac_secret_file, credentials_dir) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => dir.join(HMAC_CREDENTIAL),
        (None, None) => {
            return Err(ConfigError(format!(
                "api.auth = {:?} needs an HMAC secret: set api.hmac_secret_file, or pass the {HMAC_CREDENTIAL} credential",
                settings.api.auth
            )));
        }
    };
    let text = std::fs::read(&path).map_err(|e| ConfigError(format!("HMAC secret {}: {e}", path.display())))?;
    let secret = text.trim_ascii().to_vec();
    if secret.len() < machina_core::signing::SECRET_MIN_BYTES {
        return Err(ConfigError(format!(
            "HMAC secret in {} must be at least {} bytes",
            path.display(),
            machina_core::signing::SECRET_MIN_BYTES
        )));
    }
    Ok(secret)
}

/// The credentials `api.auth` asks for, loaded and checked (a missing one is exit 78).
pub fn load_auth(settings: &Settings, credentials_dir: Option<PathBuf>) -> Result<crate::auth::Auth, ConfigError> {
    let mode = crate::auth::AuthMode::parse(&settings.api.auth)
        .ok_or_else(|| ConfigError(format!("api.auth {:?} is not token, hmac, either or both", settings.api.auth)))?;
    let token = mode.uses_token().then(|| load_token(settings, credentials_dir.clone())).transpose()?;
    let hmac_secret = mode.uses_hmac().then(|| load_hmac_secret(settings, credentials_dir)).transpose()?;
    if mode == crate::auth::AuthMode::None {
        tracing::warn!("api.auth = \"none\": the HTTP API accepts every request unauthenticated (dev profile only)");
    }
    Ok(crate::auth::Auth { mode, token, hmac_secret, ttl_secs: settings.api.hmac_ttl_secs })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (listen, paths) = (args.listen, args.paths);
    let (setup, auth) = tokio::task::spawn_blocking(move || {
        let setup = machina_daemon::setup(paths, |s| {
            if let Some(l) = listen {
                s.api.listen = l;
            }
        })?;
        let auth = load_auth(&setup.settings, std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from))?;
        anyhow::Ok((setup, auth))
    })
    .await??;
    let machina_daemon::Setup { settings, recipes, ledger } = setup;
    let bus_address = BusAddress::parse(&settings.bus.address).map_err(ConfigError)?;
    let listeners = listeners::open(&settings.api.listen).await?;
    let shutdown = CancellationToken::new();
    let limiter = crate::ratelimit::Limiter::new(settings.api.rate_limit_per_sec, settings.api.rate_limit_burst);
    let mut state = AppState {
        ledger,
        recipes: Arc::new(recipes),
        settings: Arc::new(settings),
        auth: Arc::new(auth),
        shutdown: shutdown.clone(),
        activity: Activity::new(),
        bus: None,
        limiter,
    };
    state.bus = serve_bus(&bus_address, &state).await?;
    let signals = tokio::spawn(machina_daemon::cancel_on_signal(shutdown.clone(), "draining in-flight requests"));
    let shown: Vec<String> = listeners.iter().map(ToString::to_string).collect();
    tracing::info!(
        message_id = machina_core::log::MSG_SERVICE_READY,
        listen = %shown.join(", "),
        bus = %bus_address,
        "machina-api ready"
    );
    machina_daemon::notify::ready(&format!("listening on {}", shown.join(", ")));
    let served = serve_all(listeners, state.clone(), shutdown.clone()).await;
    machina_daemon::notify::stopping();
    signals.abort();
    if let Some(bus) = state.bus.take() {
        bus.graceful_shutdown().await;
    }
    tracing::info!("machina-api stopped");
    served
}

/// Connect to the bus, export the manager and own its name (before READY=1, so a
/// bus-activated start is answered by the time systemd considers it started).
async fn serve_bus(address: &BusAddress, state: &AppState) -> anyhow::Result<Option<zbus::Connection>> {
    let Some(builder) = machina_bus::connect::builder(address)? else { return Ok(None) };
    let conn = builder
        .serve_at(machina_bus::OBJECT_PATH, crate::bus::Manager::new(state.clone()))
        .name(machina_bus::BUS_NAME)
        .build()
        .await
        .with_context(|| format!("cannot own {} on the {address}", machina_bus::BUS_NAME))?;
    Ok(Some(conn))
}

/// Serve every listener until `shutdown`, then drain; also runs the idle watcher and the watchdog.
pub async fn serve_all(listeners: Vec<Listener>, state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let app = crate::router(state.clone());
    let mut servers = Vec::new();
    for l in listeners {
        let (app, stop) = (app.clone(), shutdown.clone());
        servers.push(tracker.spawn(async move {
            match l {
                Listener::Tcp(l) => {
                    let app = app.into_make_service_with_connect_info::<ClientAddr>();
                    axum::serve(l, app).with_graceful_shutdown(stop.cancelled_owned()).await
                }
                Listener::Unix(l) => {
                    let app = app.into_make_service_with_connect_info::<ClientAddr>();
                    axum::serve(l, app).with_graceful_shutdown(stop.cancelled_owned()).await
                }
            }
        }));
    }
    let supervisor = tracker.spawn(supervise(state, shutdown.clone()));
    tracker.close();
    let mut result = Ok(());
    for s in servers {
        if let Err(e) = s.await.context("server task failed")? {
            result = Err(anyhow::Error::from(e).context("serving HTTP"));
            shutdown.cancel();
        }
    }
    shutdown.cancel();
    tracker.wait().await;
    supervisor.await.context("supervisor task failed")??;
    result
}

/// Serve one TCP listener until `shutdown` (tests and benchmarks).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_all(vec![Listener::Tcp(listener)], state, shutdown).await
}

/// Once a second: refresh STATUS=, pet the watchdog if the ledger answers, and start the
/// idle exit when nothing has been in flight for `api.idle_exit_secs`. Stops the service
/// with an error when the ledger is poisoned (the disk refused a sync): only a restart
/// brings back a ledger that knows what is on disk.
async fn supervise(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let idle_limit = Duration::from_secs(state.settings.api.idle_exit_secs);
    let watchdog = machina_daemon::notify::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(STATUS_EVERY, |w| w.min(STATUS_EVERY)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        if let Some(e) = state.ledger.poisoned() {
            machina_daemon::notify::status("the ledger's disk refused a write: stopping");
            shutdown.cancel();
            return Err(anyhow::Error::from(e).context("the ledger can take no more writes"));
        }
        let idle = state.activity.idle_for();
        if !idle_limit.is_zero() && idle >= idle_limit {
            tracing::info!(idle_secs = idle.as_secs(), "idle: exiting until the next request or D-Bus call");
            machina_daemon::notify::status("idle: exiting");
            // Give the name back first: a call sent from now on waits for the next activation
            // instead of reaching a process on its way out.
            if let Some(bus) = &state.bus
                && let Err(e) = bus.release_name(machina_bus::BUS_NAME).await
            {
                tracing::warn!("cannot release {}: {e}", machina_bus::BUS_NAME);
            }
            shutdown.cancel();
            return Ok(());
        }
        machina_daemon::notify::status(&format!(
            "{} request(s) in flight, {} served, idle {} s",
            state.activity.in_flight(),
            state.activity.served(),
            idle.as_secs()
        ));
        if watchdog.is_some() && state.ledger.ping().await.is_ok() {
            machina_daemon::notify::watchdog();
        }
    }
}
