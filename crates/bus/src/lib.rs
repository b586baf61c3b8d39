//! machina-bus: machina's D-Bus protocol, shared by the service that
//! implements `org.machina.Manager1` (machina-api), the workers that listen
//! for its wake-up signal, and `machinactl`.
//!
//! The interface is deliberately string-typed where it carries documents:
//! runs, events and intents travel as the same JSON the HTTP API speaks, so
//! one schema (docs/operator-guide.md) describes both and `busctl` users can
//! pipe replies into `jq`.

pub mod connect;
pub mod error;
pub mod proxy;
pub mod signals;

pub use connect::{BusAddress, connect};
pub use error::BusError;
pub use proxy::Manager1Proxy;

/// Well-known bus name of the manager.
pub const BUS_NAME: &str = "org.machina.Manager1";
/// Object path of the manager.
pub const OBJECT_PATH: &str = "/org/machina/Manager1";
/// Interface name of the manager.
pub const INTERFACE: &str = "org.machina.Manager1";
/// Prefix of machina's D-Bus error names.
pub const ERROR_PREFIX: &str = "org.machina.Error";
