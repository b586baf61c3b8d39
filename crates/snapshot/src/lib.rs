//! machina-snapshot: snapshots of machina's state directory (placeholder; being written).
