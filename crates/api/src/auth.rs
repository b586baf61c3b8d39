//! Request authentication: a bearer token, HMAC request signing, either, or both
//! (`api.auth`). Signed requests carry `X-Machina-Ts`, `X-Machina-Nonce` and
//! `X-Machina-Signature: v1=<hex>` over `ts \n nonce \n METHOD \n path \n sha256(body) \n`
//! (machina_core::signing); the timestamp must be within `api.hmac_ttl_secs` of now and the
//! nonce unused — nonces are kept in the ledger, so a replay fails across restarts too.
//! The signature is checked before the nonce is recorded, so unsigned traffic writes nothing.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use machina_core::ErrorKind;
use machina_core::signing::{self, NONCE_HEADER, SIGNATURE_HEADER, TS_HEADER};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// Which credentials a request must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `Authorization: Bearer <token>`.
    Token,
    /// A valid HMAC signature.
    Hmac,
    /// One of the two.
    Either,
    /// Both.
    Both,
    /// No authentication at all (`profile = "dev"` only; refused by the prod profile).
    None,
}

impl AuthMode {
    /// Parse `api.auth`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "token" => Self::Token,
            "hmac" => Self::Hmac,
            "either" => Self::Either,
            "both" => Self::Both,
            "none" => Self::None,
            _ => return None,
        })
    }

    /// Whether the bearer token must be configured.
    pub fn uses_token(self) -> bool {
        matches!(self, Self::Token | Self::Either | Self::Both)
    }

    /// Whether the HMAC secret must be configured.
    pub fn uses_hmac(self) -> bool {
        matches!(self, Self::Hmac | Self::Either | Self::Both)
    }
}

/// The configured credentials.
pub struct Auth {
    /// Which are required.
    pub mode: AuthMode,
    /// The bearer token (when the mode uses it).
    pub token: Option<String>,
    /// The HMAC secret (when the mode uses it).
    pub hmac_secret: Option<Vec<u8>>,
    /// Allowed clock distance and nonce lifetime, in seconds.
    pub ttl_secs: u64,
}

impl Auth {
    /// Bearer token only (tests and the default).
    pub fn token(token: impl Into<String>) -> Self {
        Self { mode: AuthMode::Token, token: Some(token.into()), hmac_secret: None, ttl_secs: 60 }
    }
}

fn unauthorized(m: impl Into<String>) -> Response {
    ApiError::new(ErrorKind::Unauthorized, m).into_response()
}

/// `Ok(true)` valid, `Ok(false)` absent, `Err` present but wrong.
fn check_token(auth: &Auth, headers: &HeaderMap) -> Result<bool, &'static str> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(false) };
    let expected = auth.token.as_deref().unwrap_or("");
    match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if !expected.is_empty() && bool::from(t.as_bytes().ct_eq(expected.as_bytes())) => Ok(true),
        _ => Err("the bearer token is not valid"),
    }
}

/// Authenticate per `api.auth`, then run the request.
pub async fn require(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let auth = st.auth.clone();
    if auth.mode == AuthMode::None {
        return next.run(req).await;
    }
    let token = match check_token(&auth, req.headers()) {
        Ok(present) => present,
        Err(m) => return unauthorized(m),
    };
    let signed = req.headers().contains_key(SIGNATURE_HEADER);
    let need_sig = match auth.mode {
        AuthMode::Token => return if token { next.run(req).await } else { missing(&auth) },
        AuthMode::Either if token && !signed => return next.run(req).await,
        AuthMode::Both if !token => return missing(&auth),
        _ => true,
    };
    debug_assert!(need_sig);
    if !signed {
        return missing(&auth);
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, st.settings.api.body_limit_bytes).await {
        Ok(b) => b,
        Err(_) => return ApiError::new(ErrorKind::PayloadTooLarge, "request body too large").into_response(),
    };
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    if let Err(m) = check_signature(&st, &parts.headers, parts.method.as_str(), path, &bytes).await {
        return m;
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

fn missing(auth: &Auth) -> Response {
    unauthorized(match auth.mode {
        AuthMode::Token => "missing Authorization: Bearer <token> header",
        AuthMode::Hmac => "missing X-Machina-Signature (HMAC request signing is required)",
        AuthMode::Either => "missing credentials: a bearer token or an HMAC signature",
        AuthMode::Both => "both a bearer token and an HMAC signature are required",
        AuthMode::None => "authentication is off",
    })
}

async fn check_signature(st: &AppState, h: &HeaderMap, method: &str, path: &str, body: &[u8]) -> Result<(), Response> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (ts, nonce, sig) = (get(TS_HEADER), get(NONCE_HEADER), get(SIGNATURE_HEADER));
    let secret = st.auth.hmac_secret.as_deref().ok_or_else(|| unauthorized("HMAC signing is not configured"))?;
    if !signing::is_valid_nonce(nonce) {
        return Err(unauthorized("X-Machina-Nonce must be 8-128 characters of [A-Za-z0-9._-]"));
    }
    if !signing::verify(secret, sig, ts, nonce, method, path, body) {
        return Err(unauthorized("the request signature is not valid"));
    }
    let ttl = st.auth.ttl_secs as i64;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let Ok(ts) = ts.parse::<i64>() else { return Err(unauthorized("X-Machina-Ts must be Unix seconds")) };
    if (now - ts).abs() > ttl {
        return Err(unauthorized(format!("the signature's timestamp is more than {ttl} s from now")));
    }
    match st.ledger.use_nonce(nonce, (ts + ttl + 1) * 1000).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(unauthorized("this nonce was already used (replayed request)")),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}
