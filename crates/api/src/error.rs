//! API errors: `{"error": kind, "message": …}` with the status the kind implies.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use machina_core::{ErrorKind, RecipeError};
use machina_ledger::LedgerError;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// Stable kind.
    pub kind: ErrorKind,
    /// What was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// 400 invalid_input.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let kind = e.kind();
        if kind == ErrorKind::Internal || kind == ErrorKind::Integrity {
            tracing::error!(error = %e, kind = kind.as_str(), "ledger error");
        }
        Self::new(kind, e.to_string())
    }
}

impl From<RecipeError> for ApiError {
    fn from(e: RecipeError) -> Self {
        let kind = match e {
            RecipeError::OverCaps { .. } => ErrorKind::QueuePolicyViolation,
            _ => ErrorKind::InvalidInput,
        };
        Self::new(kind, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": self.kind, "message": self.message});
        let mut resp = (status, Json(body)).into_response();
        if self.kind == ErrorKind::Unauthorized {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"machina\""));
        }
        if self.kind == ErrorKind::Unavailable {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
