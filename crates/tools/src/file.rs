//! The `file` tool (being written).
