//! One candidate's HTTP exchange: a POST under a timeout, the body read as a stream and
//! dropped as soon as it passes the cap, retries with jittered exponential backoff on 429,
//! 5xx and failed connections, a provider's `Retry-After` winning (cut to the timeout).
//!
//! The client is reqwest's default, environment proxies included (operators may need one
//! for LLM egress), but a redirect is followed only within the same origin: a hop to another
//! host or scheme would hand it the credential.

use backon::{ExponentialBuilder, Retryable};
use machina_core::config::JudgeSettings;
use reqwest::Url;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime};

use super::error::{CallError, JudgeError};
use machina_core::error::error_chain as chain;

/// Redirects followed within one origin before giving up.
const MAX_REDIRECTS: usize = 5;

/// A provider's response as it came: what fixtures store and replay returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// The HTTP side of the judge, shared by every candidate.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
    max_response_bytes: usize,
}

/// How one try ended, when it did not end with a final response.
#[derive(Debug)]
enum TryFail {
    /// 429 or 5xx: worth another try; kept so the last one can be returned as it is.
    Busy { raw: Raw, retry_after: Option<Duration> },
    /// The connection failed: worth another try.
    Connect(CallError),
    /// Not worth another try (timeout, size cap, anything else).
    Fatal(CallError),
}

impl Transport {
    pub(crate) fn new(s: &JudgeSettings) -> Result<Self, JudgeError> {
        let timeout = Duration::from_millis(s.timeout_ms);
        let same_origin = reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().map(Url::origin);
            if first.as_ref() != Some(&attempt.url().origin()) {
                attempt.stop()
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(same_origin)
            .connect_timeout(timeout)
            .referer(false)
            .user_agent(concat!("machina-judge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| JudgeError::Client(chain(&e)))?;
        Ok(Self {
            client,
            timeout,
            max_retries: s.max_retries,
            backoff_base: Duration::from_millis(s.backoff_base_ms),
            max_response_bytes: s.max_response_bytes,
        })
    }

    /// POSTs `body` to `url`, retrying while the provider is busy or unreachable. A final
    /// non-success status (the last 429 or 5xx included) is returned as a response, for the
    /// caller to interpret and record.
    pub(crate) async fn post(&self, url: &Url, headers: &HeaderMap, body: &[u8]) -> Result<Raw, CallError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.backoff_base)
            .with_max_delay(self.timeout)
            .with_max_times(self.max_retries as usize)
            .with_jitter();
        let timeout = self.timeout;
        let outcome = (|| self.try_once(url, headers, body))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e| matches!(e, TryFail::Busy { .. } | TryFail::Connect(_)))
            .adjust(move |e, delay| match e {
                TryFail::Busy { retry_after: Some(wait), .. } => delay.map(|_| (*wait).min(timeout)),
                _ => delay,
            })
            .notify(|e, delay| match e {
                TryFail::Busy { raw, .. } => {
                    tracing::debug!(url = %url, status = raw.status, ?delay, "judge provider busy; retrying")
                }
                other => tracing::debug!(url = %url, error = ?other, ?delay, "judge provider unreachable; retrying"),
            })
            .await;
        match outcome {
            Ok(raw) | Err(TryFail::Busy { raw, .. }) => Ok(raw),
            Err(TryFail::Connect(e) | TryFail::Fatal(e)) => Err(e),
        }
    }

    async fn try_once(&self, url: &Url, headers: &HeaderMap, body: &[u8]) -> Result<Raw, TryFail> {
        let exchange =
            async {
                let response =
                    self.client.post(url.clone()).headers(headers.clone()).body(body.to_vec()).send().await.map_err(
                        |e| if e.is_connect() { TryFail::Connect(net(&e)) } else { TryFail::Fatal(net(&e)) },
                    )?;
                let retry_after = retry_after(response.headers(), SystemTime::now());
                let raw = self.read_capped(response).await.map_err(TryFail::Fatal)?;
                if raw.status == 429 || (500..=599).contains(&raw.status) {
                    return Err(TryFail::Busy { raw, retry_after });
                }
                Ok(raw)
            };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(TryFail::Fatal(CallError::Timeout(self.timeout.as_millis()))),
        }
    }

    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Raw, CallError> {
        let status = response.status().as_u16();
        let cap = self.max_response_bytes;
        let too_large = |what: String| {
            CallError::TooLarge(format!("{what} is over the {cap}-byte limit (judge.max_response_bytes)"))
        };
        if let Some(declared) = response.content_length().filter(|n| *n > cap as u64) {
            return Err(too_large(format!("a response body of {declared} bytes (Content-Length)")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| net(&e))? {
            if body.len() + chunk.len() > cap {
                // Dropping the response closes the connection: nothing more is read.
                return Err(too_large(format!("a response body of more than {} bytes", body.len() + chunk.len())));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Raw { status, body })
    }
}

fn net(e: &reqwest::Error) -> CallError {
    // The URL in reqwest's message is the provider's, never a secret: keys go in headers.
    CallError::Unreachable(chain(e))
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 allows both).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
