//! machina-api: the HTTP API over the ledger.
//!
//! Routes live in `routes/` (one file per resource); this module builds the
//! router with its layers: request ids on every request and response, bearer
//! auth on everything but /health and /metrics, and the body size limit.

pub mod activity;
pub mod auth;
pub mod bus;
pub mod daemon;
pub mod error;
pub mod extract;
pub mod leases;
mod listeners;
mod metrics;
pub mod ratelimit;
mod routes;
pub mod snapshots;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use machina_core::config::Settings;
use machina_core::{ErrorKind, RecipeBook};
use machina_ledger::Ledger;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::extract::{REQUEST_ID_HEADER, RequestId};

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    /// The ledger.
    pub ledger: Ledger,
    /// Recipes known to this process.
    pub recipes: Arc<RecipeBook>,
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// The credentials requests must carry (bearer token, HMAC, or both).
    pub auth: Arc<auth::Auth>,
    /// Cancelled at shutdown: long-lived streams end so the server can drain.
    pub shutdown: CancellationToken,
    /// Requests and D-Bus calls in flight, for the idle exit.
    pub activity: activity::Activity,
    /// The bus connection signals go out on (`None` with `bus.address = "none"`).
    pub bus: Option<zbus::Connection>,
    /// Per-client, per-endpoint rate limits (`None`: unlimited).
    pub limiter: Option<ratelimit::Limiter>,
}

/// The full router.
pub fn router(state: AppState) -> Router {
    let limit = state.settings.api.body_limit_bytes;
    let protected = routes::protected().route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .merge(protected)
        .merge(routes::open())
        .route_layer(middleware::from_fn_with_state(state.clone(), ratelimit::limit))
        .fallback(|| async { ApiError::new(ErrorKind::NotFound, "no such route (see README.md for the API)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorKind::MethodNotAllowed, "this route does not accept that method")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(request_id))
        .layer(middleware::from_fn_with_state(state.clone(), track_activity))
        .with_state(state)
}

/// Hold the service busy for the whole request (the idle exit waits for it).
async fn track_activity(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let _busy = st.activity.begin();
    next.run(req).await
}

async fn request_id(mut req: Request, next: Next) -> Response {
    let rid = match RequestId::from_header(req.headers().get(REQUEST_ID_HEADER)) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let span = tracing::info_span!("request", request_id = %rid.id, method = %req.method(), path = %req.uri().path());
    let header = HeaderValue::from_str(&rid.id).ok();
    req.extensions_mut().insert(rid);
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "request done"));
    if let Some(h) = header {
        resp.headers_mut().insert(REQUEST_ID_HEADER, h);
    }
    resp
}
