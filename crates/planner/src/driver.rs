//! The external policy driver (being written).
