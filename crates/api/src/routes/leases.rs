//! `/v1/leases`: admins issue, list and revoke permission leases.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use machina_ledger::LeaseRecord;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiQuery, JsonBody};
use crate::leases::{Issued, issue};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct IssueBody {
    tool: String,
    tier: u8,
    ttl_secs: Option<u64>,
    /// Who asks (the bearer token names no one); defaults to "api".
    issued_by: Option<String>,
}

pub(crate) async fn create(
    State(st): State<AppState>,
    body: JsonBody<IssueBody>,
) -> ApiResult<(StatusCode, Json<Issued>)> {
    let b = body.value;
    let issued = issue(&st, &b.tool, b.tier, b.ttl_secs, b.issued_by.as_deref().unwrap_or("api")).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub(crate) async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Vec<LeaseRecord>>> {
    Ok(Json(st.ledger.list_leases(q.all).await?))
}

pub(crate) async fn revoke(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<LeaseRecord>> {
    let lease = st.ledger.revoke_lease(&id).await?;
    tracing::info!(lease_id = %id, "permission lease revoked");
    Ok(Json(lease))
}
