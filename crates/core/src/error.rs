//! Stable error kinds: the one vocabulary for HTTP bodies, logs and metrics.

use serde::{Serialize, Serializer};
use std::fmt;

/// What went wrong, as a stable machine-readable string (`kind()`).
///
/// Each kind implies one HTTP status; callers branch on the kind, never on
/// the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request was malformed (bad JSON, bad value).
    InvalidInput,
    /// The request was well-formed JSON but not a valid request (unknown field, wrong type).
    InvalidRequest,
    /// The workload exceeds what the recipe allows.
    QueuePolicyViolation,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The named object does not exist.
    NotFound,
    /// The operation is not legal in the object's current state.
    IllegalState,
    /// A retry was asked for a run that already succeeded.
    RetryDrift,
    /// The request conflicts with existing data (e.g. a reused request id with another body).
    Conflict,
    /// The route exists but not with this HTTP method.
    MethodNotAllowed,
    /// The request body is larger than the configured limit.
    PayloadTooLarge,
    /// The client made too many requests to one endpoint; retry after the time given.
    RateLimited,
    /// The ledger is locked by another process or the disk is full: try again later.
    Unavailable,
    /// Stored data failed its integrity check.
    Integrity,
    /// A bug or unexpected failure.
    Internal,
}

impl ErrorKind {
    /// The stable string used in HTTP bodies, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::InvalidRequest => "invalid_request",
            Self::QueuePolicyViolation => "queue_policy_violation",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::IllegalState => "illegal_state",
            Self::RetryDrift => "retry_drift",
            Self::Conflict => "conflict",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Integrity => "integrity",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status this kind implies.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidInput | Self::QueuePolicyViolation => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::IllegalState | Self::RetryDrift | Self::Conflict => 409,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::InvalidRequest => 422,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Integrity | Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error and its causes on one line (`outer: cause: root cause`): many libraries' own
/// messages (reqwest's, for one) hide the reason in their sources.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
