//! GET /health and GET /metrics (open: no token), and GET /v1/config (authenticated: the
//! effective configuration, secrets redacted).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;

pub(crate) async fn health(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    st.ledger.ping().await?;
    let pragmas = st.ledger.pragmas();
    // Each online worker with what its per-task sandbox enforces (its startup preflight).
    let workers = st.ledger.workers(crate::bus::WORKER_ONLINE_WINDOW_MS).await?;
    Ok(Json(json!({
        "status": "ok",
        "version": machina_core::APP_VERSION,
        "schemaVersion": machina_ledger::SCHEMA_VERSION,
        "ledger": pragmas,
        "workers": workers,
    })))
}

pub(crate) async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let stats = st.ledger.stats().await?;
    let text = crate::metrics::render(&stats);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

pub(crate) async fn config(State(st): State<AppState>) -> Json<Value> {
    Json(st.settings.to_redacted_json())
}
