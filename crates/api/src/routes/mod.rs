//! Route table: one module per resource.

mod artifacts;
mod events;
mod health;
pub(crate) mod intents;
mod leases;
mod runs;

use axum::Router;
use axum::routing::{delete, get, post};

use crate::AppState;

/// Routes that need the bearer token.
pub(crate) fn protected() -> Router<AppState> {
    Router::new()
        .route("/intents", post(intents::create))
        .route("/intents/{id}/run", post(intents::start_run))
        .route("/enqueue", post(intents::enqueue))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/approve-plan", post(runs::approve))
        .route("/runs/{id}/retry", post(runs::retry))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/events", get(events::list_or_stream))
        .route("/artifacts/{sha256}", get(artifacts::get))
        .route("/leases", post(leases::create).get(leases::list))
        .route("/leases/{id}", delete(leases::revoke))
        .route("/config", get(health::config))
}

/// Routes open to anyone who can reach the socket.
pub(crate) fn open() -> Router<AppState> {
    Router::new().route("/health", get(health::health)).route("/metrics", get(health::metrics))
}
