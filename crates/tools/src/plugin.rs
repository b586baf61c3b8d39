//! The `plugin` tool (being written).
