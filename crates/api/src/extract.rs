//! Extractors: JSON bodies with precise errors, and the request id.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use machina_core::ErrorKind;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest accepted client request id.
pub const REQUEST_ID_MAX_LEN: usize = 128;

/// The request's id: the client's `X-Request-Id`, or one generated here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId {
    /// The id.
    pub id: String,
    /// Whether the client supplied it (only then is it used to deduplicate submissions).
    pub from_client: bool,
}

impl RequestId {
    /// Parse a client's header value, or generate an id.
    pub fn from_header(value: Option<&axum::http::HeaderValue>) -> Result<Self, ApiError> {
        match value {
            None => Ok(Self { id: uuid::Uuid::now_v7().to_string(), from_client: false }),
            Some(v) => {
                let s = v.to_str().map_err(|_| ApiError::invalid("X-Request-Id must be printable ASCII"))?;
                let ok = !s.is_empty()
                    && s.len() <= REQUEST_ID_MAX_LEN
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
                if !ok {
                    return Err(ApiError::invalid(format!(
                        "X-Request-Id must be 1-{REQUEST_ID_MAX_LEN} characters of [A-Za-z0-9-_.:]"
                    )));
                }
                Ok(Self { id: s.to_string(), from_client: true })
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "request id middleware missing"))
    }
}

/// A JSON body, plus the sha256 of (method, path, body) for idempotent replays.
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The parsed value.
    pub value: T,
    /// sha256 of the request identity.
    pub request_sha256: String,
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorKind::PayloadTooLarge, "request body is larger than api.body_limit_bytes")
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
        })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let value = serde_json::from_slice::<T>(body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}"))
            }
            _ => ApiError::invalid(format!("malformed JSON: {e}")),
        })?;
        let mut h = Sha256::new();
        for part in [method.as_bytes(), b"\0", path.as_bytes(), b"\0", body] {
            h.update(part);
        }
        Ok(Self { value, request_sha256: hex::encode(h.finalize()) })
    }
}

/// Query parameters, with the same JSON errors as bodies (unknown or malformed parameters are 400).
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
    }
}
