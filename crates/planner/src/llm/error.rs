//! Errors: [`JudgeError`] for settings a judge cannot be built from, and `CallError`, why
//! one candidate gave no usable answer (recorded in the decision, then the next is asked).

/// Why a [`super::Judge`] could not be built: the settings, not the network.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JudgeError {
    /// A setting is invalid; the message names the key.
    #[error("{0}")]
    Settings(String),
    /// The HTTP client could not be built (TLS roots, for one).
    #[error("cannot build the judge's HTTP client: {0}")]
    Client(String),
}

impl JudgeError {
    /// Stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Settings(_) => "invalid_settings",
            Self::Client(_) => "http_client",
        }
    }
}

/// Why one candidate gave no usable answer. Its `kind()` and message go into the decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallError {
    /// No complete response within `judge.timeout_ms`.
    #[error("no complete response within {0} ms (judge.timeout_ms)")]
    Timeout(u128),
    /// Connecting or transferring failed (after the retries).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// 401 or 403: the provider refused the credential.
    #[error("the provider rejected the credential (HTTP {0}): check the file behind the provider's credential id")]
    Rejected(u16),
    /// Any other non-success status (429 and 5xx after the retries).
    #[error("HTTP {status}: {detail}")]
    Http {
        /// The status code.
        status: u16,
        /// The provider's error message, or the start of the body.
        detail: String,
    },
    /// The request or the response passed a size cap.
    #[error("{0}")]
    TooLarge(String),
    /// A success status with a body that is not the API's shape, or an answer that is not JSON.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The model answered without an answer: it refused, or was cut off at `max_tokens`.
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The caller's validation refused the answer.
    #[error("invalid answer: {0}")]
    Invalid(String),
    /// Replay found no fixture for the request.
    #[error("no fixture for request {0} (record it with judge.mode = \"record\")")]
    NoFixture(String),
    /// A fixture could not be read or written.
    #[error("fixture: {0}")]
    Fixture(String),
    /// The credential cannot be sent (not a valid header value).
    #[error("the credential is not usable as an HTTP header value (stray bytes in the file?)")]
    BadCredential,
}

impl CallError {
    /// Stable name, stored in [`super::Attempt::kind`].
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Unreachable(_) => "unreachable",
            Self::Rejected(_) => "credential_rejected",
            Self::Http { .. } => "http_status",
            Self::TooLarge(_) => "too_large",
            Self::Malformed(_) => "malformed_response",
            Self::NoAnswer(_) => "no_answer",
            Self::Invalid(_) => "invalid_answer",
            Self::NoFixture(_) => "no_fixture",
            Self::Fixture(_) => "fixture_io",
            Self::BadCredential => "credential_unusable",
        }
    }
}
