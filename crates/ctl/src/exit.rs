//! Exit statuses scripts can branch on, and the error that carries one.

use machina_bus::BusError;
use std::fmt;

/// Success.
pub const OK: u8 = 0;
/// The watched run failed or was canceled, or an error with no better status.
pub const FAILED: u8 = 1;
/// No such run (or partition, intent, artifact).
pub const NOT_FOUND: u8 = 3;
/// Not legal in the run's state, a retry of a succeeded run, or a conflicting request id.
pub const ILLEGAL_STATE: u8 = 4;
/// The bus policy or the service refused the caller.
pub const PERMISSION_DENIED: u8 = 5;
/// The input was invalid or over the recipe's caps (EX_DATAERR).
pub const INVALID_INPUT: u8 = 65;
/// machina could not be reached (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;

/// An error with the exit status it maps to.
#[derive(Debug)]
pub struct CtlError {
    /// Exit status.
    pub status: u8,
    /// What went wrong, for a human.
    pub message: String,
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

impl CtlError {
    /// An error with `status`.
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<BusError> for CtlError {
    fn from(e: BusError) -> Self {
        let status = match &e {
            BusError::NotFound(_) => NOT_FOUND,
            BusError::IllegalState(_) | BusError::RetryDrift(_) | BusError::Conflict(_) => ILLEGAL_STATE,
            BusError::AccessDenied(_) => PERMISSION_DENIED,
            BusError::InvalidInput(_) | BusError::PolicyViolation(_) => INVALID_INPUT,
            BusError::Unavailable(_) => UNAVAILABLE,
            BusError::Integrity(_) | BusError::Internal(_) => FAILED,
            BusError::ZBus(z) => return transport(z),
        };
        let message = format!("{}: {}", e.short_name(), e.message().unwrap_or_default());
        Self::new(status, message)
    }
}

impl From<zbus::Error> for CtlError {
    fn from(e: zbus::Error) -> Self {
        transport(&e)
    }
}

/// Map a transport-level error: the bus's own refusals and "nobody there".
fn transport(e: &zbus::Error) -> CtlError {
    // The bus daemon's own refusals (a policy rejection, no such name) arrive as FDO errors.
    let fdo = match e {
        zbus::Error::FDO(f) => {
            use zbus::DBusError;
            Some((f.name().to_string(), f.description().map(str::to_string)))
        }
        zbus::Error::MethodError(name, detail, _) => Some((name.to_string(), detail.clone())),
        _ => None,
    };
    if let Some((name, detail)) = fdo {
        let text = detail.unwrap_or_default();
        return match name.as_str() {
            "org.freedesktop.DBus.Error.AccessDenied" => CtlError::new(
                PERMISSION_DENIED,
                format!("permission denied: only root and members of machina-admin may do this ({text})"),
            ),
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Spawn.ChildExited"
            | "org.freedesktop.DBus.Error.Spawn.Failed" => {
                CtlError::new(UNAVAILABLE, format!("machina is not reachable on the bus: {text}"))
            }
            "org.freedesktop.DBus.Error.UnknownMethod" | "org.freedesktop.DBus.Error.InvalidArgs" => {
                CtlError::new(FAILED, format!("machina does not understand this call (version mismatch?): {text}"))
            }
            _ => CtlError::new(FAILED, format!("{name}: {text}")),
        };
    }
    CtlError::new(UNAVAILABLE, format!("cannot talk to the bus: {e}"))
}
