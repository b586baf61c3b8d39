//! GET /runs, GET /runs/{id}, POST /runs/{id}/approve-plan|retry|cancel.

use axum::Json;
use axum::extract::{Path, State};
use machina_core::RunStatus;
use machina_ledger::{RunDetail, RunFilter, RunRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiQuery, JsonBody};

/// Default page size of GET /runs.
const DEFAULT_PAGE: u32 = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    status: Option<String>,
    partition: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

pub(crate) async fn list(State(st): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Json<Value>> {
    let status = q.status.as_deref().map(str::parse::<RunStatus>).transpose().map_err(ApiError::invalid)?;
    let max = st.settings.api.max_page_size;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid(format!("limit must be 1-{max}")));
    }
    let runs = st.ledger.list_runs(RunFilter { status, partition_key: q.partition, before: q.before, limit }).await?;
    let next = (runs.len() as u32 == limit).then(|| runs.last().map(|r| r.id.clone())).flatten();
    Ok(Json(json!({"runs": runs, "nextBefore": next})))
}

pub(crate) async fn get(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<RunDetail>> {
    Ok(Json(st.ledger.run_detail(&id).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Approve {
    approved_by: String,
    plan_sha256: Option<String>,
}

pub(crate) async fn approve(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: JsonBody<Approve>,
) -> ApiResult<Json<RunRecord>> {
    let a = body.value;
    let who = a.approved_by.trim();
    if who.is_empty() || who.len() > 256 {
        return Err(ApiError::invalid("approvedBy must be 1-256 characters"));
    }
    if let Some(sha) = a.plan_sha256.as_deref().filter(|s| !machina_ledger::is_sha256_hex(s)) {
        return Err(ApiError::invalid(format!("planSha256 {sha:?} is not 64 lowercase hex digits")));
    }
    let run = st.ledger.approve_plan(&id, who, a.plan_sha256).await?;
    crate::bus::announce(&st, &run).await;
    Ok(Json(run))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Empty {}

pub(crate) async fn retry(
    State(st): State<AppState>,
    Path(id): Path<String>,
    _b: JsonBody<Empty>,
) -> ApiResult<Json<RunRecord>> {
    let run = st.ledger.retry_run(&id).await?;
    crate::bus::announce(&st, &run).await;
    Ok(Json(run))
}

pub(crate) async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
    _b: JsonBody<Empty>,
) -> ApiResult<Json<RunRecord>> {
    let run = st.ledger.cancel_run(&id).await?;
    crate::bus::announce(&st, &run).await;
    Ok(Json(run))
}
