//! Rate limits per client and endpoint (`api.rate_limit_per_sec`, `api.rate_limit_burst`).
//!
//! A client is its peer: the IP address of a TCP peer, the uid of a unix-socket peer. An
//! endpoint is the method and the route's pattern (`POST /runs/{id}/approve-plan`), so one
//! client hammering one endpoint does not slow its other calls. Unauthenticated requests
//! count too: the limit runs before authentication, which slows guessing. Over the limit:
//! 429 `rate_limited` with `Retry-After`.

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use machina_core::ErrorKind;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use crate::AppState;
use crate::error::ApiError;

/// Who is calling, as far as the transport says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAddr {
    /// A TCP peer's address.
    Ip(IpAddr),
    /// A unix-socket peer's uid (None when the kernel did not say).
    Unix(Option<u32>),
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for ClientAddr {
    fn connect_info(s: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self::Ip(s.remote_addr().ip())
    }
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for ClientAddr {
    fn connect_info(s: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Self::Unix(s.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// Most distinct (client, endpoint) keys kept before idle ones are forgotten.
const MAX_KEYS: usize = 10_000;

/// The limiter shared by every request of the process.
#[derive(Clone)]
pub struct Limiter(Arc<DefaultKeyedRateLimiter<(Option<ClientAddr>, String)>>);

impl Limiter {
    /// A limiter for `per_sec` requests per second with bursts of `burst`; None when `per_sec` is 0.
    pub fn new(per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        Some(Self(Arc::new(governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))))
    }
}

/// The middleware.
pub async fn limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(limiter) = &st.limiter else { return next.run(req).await };
    let client = req.extensions().get::<ConnectInfo<ClientAddr>>().map(|c| c.0);
    let route = req.extensions().get::<MatchedPath>().map_or(req.uri().path(), |m| m.as_str());
    let key = (client, format!("{} {route}", req.method()));
    if limiter.0.len() > MAX_KEYS {
        limiter.0.retain_recent();
    }
    match limiter.0.check_key(&key) {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::warn!(client = ?client, endpoint = %key.1, "rate limit exceeded");
            let mut resp = ApiError::new(
                ErrorKind::RateLimited,
                format!("too many requests to {} from this client; retry in {secs} s", key.1),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            resp
        }
    }
}
