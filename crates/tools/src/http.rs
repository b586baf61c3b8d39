//! The `http` tool (being written).
