//! GET /artifacts/{sha256}: the bytes, verified against their name.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiResult;

pub(crate) async fn get(State(st): State<AppState>, Path(sha): Path<String>) -> ApiResult<Response> {
    let bytes = st.ledger.get_artifact(&sha).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::ETAG, format!("\"{sha}\"")),
            (header::CACHE_CONTROL, "private, max-age=31536000, immutable".to_string()),
        ],
        bytes,
    )
        .into_response())
}
