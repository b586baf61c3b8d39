//! machina's D-Bus errors: one named error per stable [`ErrorKind`], so a
//! `busctl` user sees `org.machina.Error.IllegalState` where an HTTP client
//! sees `{"kind": "illegal_state"}`.

use machina_core::ErrorKind;

/// An error a Manager1 method returns. The variant is the D-Bus error name
/// (under `org.machina.Error.`), the string the human-readable message.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.machina.Error")]
pub enum BusError {
    /// Malformed or invalid arguments.
    InvalidInput(String),
    /// A workload over its recipe's caps.
    PolicyViolation(String),
    /// The caller may not do this.
    AccessDenied(String),
    /// No such run, intent or artifact.
    NotFound(String),
    /// Not legal in the object's current state.
    IllegalState(String),
    /// Retry of a run that already succeeded.
    RetryDrift(String),
    /// Conflicts with existing data (a reused request id with another body).
    Conflict(String),
    /// The ledger is busy or the disk full: try again.
    Unavailable(String),
    /// Stored data failed its integrity check.
    Integrity(String),
    /// A bug or unexpected failure.
    Internal(String),
    /// A D-Bus transport error.
    #[zbus(error)]
    ZBus(zbus::Error),
}

impl BusError {
    /// The error for a stable kind and message.
    pub fn from_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        let m = message.into();
        match kind {
            ErrorKind::InvalidInput | ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge => Self::InvalidInput(m),
            ErrorKind::QueuePolicyViolation => Self::PolicyViolation(m),
            ErrorKind::Unauthorized => Self::AccessDenied(m),
            ErrorKind::NotFound => Self::NotFound(m),
            ErrorKind::IllegalState | ErrorKind::MethodNotAllowed => Self::IllegalState(m),
            ErrorKind::RetryDrift => Self::RetryDrift(m),
            ErrorKind::Conflict => Self::Conflict(m),
            ErrorKind::Unavailable | ErrorKind::RateLimited => Self::Unavailable(m),
            ErrorKind::Integrity => Self::Integrity(m),
            ErrorKind::Internal => Self::Internal(m),
        }
    }

    /// The service's message (None for a transport error, which has its own wording).
    pub fn message(&self) -> Option<&str> {
        match self {
            Self::ZBus(_) => None,
            Self::InvalidInput(m)
            | Self::PolicyViolation(m)
            | Self::AccessDenied(m)
            | Self::NotFound(m)
            | Self::IllegalState(m)
            | Self::RetryDrift(m)
            | Self::Conflict(m)
            | Self::Unavailable(m)
            | Self::Integrity(m)
            | Self::Internal(m) => Some(m),
        }
    }

    /// The short name after the prefix (`IllegalState`), for exit codes and messages.
    pub fn short_name(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "InvalidInput",
            Self::PolicyViolation(_) => "PolicyViolation",
            Self::AccessDenied(_) => "AccessDenied",
            Self::NotFound(_) => "NotFound",
            Self::IllegalState(_) => "IllegalState",
            Self::RetryDrift(_) => "RetryDrift",
            Self::Conflict(_) => "Conflict",
            Self::Unavailable(_) => "Unavailable",
            Self::Integrity(_) => "Integrity",
            Self::Internal(_) => "Internal",
            Self::ZBus(_) => "Transport",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::DBusError;

    #[test]
    fn names_follow_the_prefix() {
        let e = BusError::from_kind(ErrorKind::IllegalState, "not waiting for approval");
        assert_eq!(e.name().as_str(), "org.machina.Error.IllegalState");
        assert_eq!(e.description(), Some("not waiting for approval"));
        let e = BusError::from_kind(ErrorKind::QueuePolicyViolation, "too many");
        assert_eq!(e.name().as_str(), "org.machina.Error.PolicyViolation");
    }
}
