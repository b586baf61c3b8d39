//! Journal MESSAGE_IDs of machina's key events (documented in
//! packaging/catalog/machina.catalog, so `journalctl -x` explains them), and
//! the names of the structured fields every line about a run carries.
//!
//! Log with `tracing::info!(message_id = MSG_RUN_SUBMITTED, run_id = …, "…")`;
//! the journald layer writes fields upper-cased (`MESSAGE_ID`, `RUN_ID`) so
//! `journalctl RUN_ID=…` finds them.

/// A run was submitted.
pub const MSG_RUN_SUBMITTED: &str = "523696ae5fc443819dcbe5074d84496f";
/// A run's plan waits for approval.
pub const MSG_APPROVAL_REQUIRED: &str = "bfddc75ee33648fbb2975d11f721883b";
/// A run reached a final state (succeeded, failed, retries_exceeded, canceled).
pub const MSG_RUN_FINISHED: &str = "a3950e52e2074e65a57b809c16e74372";
/// A task attempt failed.
pub const MSG_TASK_FAILED: &str = "cadcf67c66fc4a829f4b8b6a7b982564";
/// Expired leases were taken back from a worker that stopped renewing them.
pub const MSG_LEASE_RECLAIMED: &str = "4fa72630e8ca42bea58d8cc81a7b74d8";
/// A daemon is ready (the API listening, a worker claiming).
pub const MSG_SERVICE_READY: &str = "956ef59ceb80487fba47ed284bd88fa7";

/// A snapshot of the state was created.
pub const MSG_SNAPSHOT_CREATED: &str = "9417ff7a8d284f84be4399e425e66997";
/// Snapshots were deleted by retention.
pub const MSG_SNAPSHOT_PRUNED: &str = "91f25fb6645b48d7886304980c82b008";
/// A snapshot could not be created (or pruned).
pub const MSG_SNAPSHOT_FAILED: &str = "2677aa2448a44e93981f014ab0c8635e";
/// The state was restored from a snapshot.
pub const MSG_SNAPSHOT_RESTORED: &str = "2d4549c47a7b4f77886cba85ef431303";
/// Maintenance finished (expired, reclaimed, pruned, checkpointed).
pub const MSG_MAINTENANCE_DONE: &str = "2fec123bbd9c41ae98a22191ab306471";
/// Integrity verification found a violation.
pub const MSG_VERIFY_FAILED: &str = "57331a3d5d914c4e990f8b4422bc8af5";

/// Every MESSAGE_ID with a short name, for the catalog check in tests.
pub const ALL_MESSAGE_IDS: [(&str, &str); 12] = [
    ("run submitted", MSG_RUN_SUBMITTED),
    ("approval required", MSG_APPROVAL_REQUIRED),
    ("run finished", MSG_RUN_FINISHED),
    ("task failed", MSG_TASK_FAILED),
    ("lease reclaimed", MSG_LEASE_RECLAIMED),
    ("service ready", MSG_SERVICE_READY),
    ("snapshot created", MSG_SNAPSHOT_CREATED),
    ("snapshots pruned", MSG_SNAPSHOT_PRUNED),
    ("snapshot failed", MSG_SNAPSHOT_FAILED),
    ("snapshot restored", MSG_SNAPSHOT_RESTORED),
    ("maintenance done", MSG_MAINTENANCE_DONE),
    ("verify failed", MSG_VERIFY_FAILED),
];
