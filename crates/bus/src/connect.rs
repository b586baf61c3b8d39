//! Which bus to talk to: the `bus.address` setting, parsed once.

use std::fmt;

/// Where machina's D-Bus traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusAddress {
    /// The system bus (production).
    System,
    /// No D-Bus at all: the API serves HTTP only and workers poll.
    None,
    /// An explicit address (tests run a private dbus-daemon).
    Address(String),
}

impl BusAddress {
    /// Parse `"system"`, `"none"` or a D-Bus address (`unix:path=…`, `unix:abstract=…`, `tcp:…`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "system" => Ok(Self::System),
            "none" => Ok(Self::None),
            a if a.contains(':') && a.contains('=') => Ok(Self::Address(a.to_string())),
            other => Err(format!("bus address {other:?} is not \"system\", \"none\" or a D-Bus address")),
        }
    }
}

impl fmt::Display for BusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system bus"),
            Self::None => f.write_str("no bus"),
            Self::Address(a) => f.write_str(a),
        }
    }
}

/// A connection builder for `address` (`None` for [`BusAddress::None`]).
pub fn builder(address: &BusAddress) -> zbus::Result<Option<zbus::connection::Builder<'static>>> {
    Ok(match address {
        BusAddress::System => Some(zbus::connection::Builder::system()),
        BusAddress::None => None,
        BusAddress::Address(a) => Some(zbus::connection::Builder::address(a.as_str())),
    })
}

/// Connect to `address` as a plain client (`None` for [`BusAddress::None`]).
pub async fn connect(address: &BusAddress) -> zbus::Result<Option<zbus::Connection>> {
    match builder(address)? {
        Some(b) => Ok(Some(b.build().await?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(BusAddress::parse("system").unwrap(), BusAddress::System);
        assert_eq!(BusAddress::parse("none").unwrap(), BusAddress::None);
        assert_eq!(BusAddress::parse("unix:path=/run/x").unwrap(), BusAddress::Address("unix:path=/run/x".into()));
        assert!(BusAddress::parse("sytem").unwrap_err().contains("sytem"));
    }
}
