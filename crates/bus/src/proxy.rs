//! The client side of `org.machina.Manager1` (used by `machinactl`).
//! Every method and property is also reachable with plain `busctl`; see README.md.

use zbus::proxy;

use crate::BusError;

/// Proxy for `org.machina.Manager1` at `/org/machina/Manager1`.
#[proxy(
    interface = "org.machina.Manager1",
    default_service = "org.machina.Manager1",
    default_path = "/org/machina/Manager1"
)]
pub trait Manager1 {
    /// Submit an intent (the JSON of POST /enqueue); `request_id` "" for none. Returns the run JSON.
    fn submit_intent(&self, intent_json: &str, request_id: &str) -> Result<String, BusError>;
    /// Start a run of `recipe` with `inputs_json` as its inputs. Returns the run JSON.
    fn start_run(&self, recipe: &str, inputs_json: &str) -> Result<String, BusError>;
    /// A run with its steps and tasks, as JSON.
    fn get_run(&self, run_id: &str) -> Result<String, BusError>;
    /// Runs, newest first, optionally only those in `status` ("" for all).
    fn list_runs(&self, status: &str, limit: u32) -> Result<String, BusError>;
    /// Approve a run's plan; `plan_sha256` "" approves whatever plan the run holds.
    fn approve_plan(&self, run_id: &str, plan_sha256: &str) -> Result<String, BusError>;
    /// Retry a failed run from its failed step.
    fn retry_run(&self, run_id: &str) -> Result<String, BusError>;
    /// Cancel a run.
    fn cancel_run(&self, run_id: &str) -> Result<String, BusError>;
    /// Stop claiming tasks in a partition.
    fn pause_partition(&self, partition: &str) -> Result<(), BusError>;
    /// Claim tasks in a partition again.
    fn resume_partition(&self, partition: &str) -> Result<(), BusError>;
    /// A run's events after sequence number `after`, as JSON.
    fn events(&self, run_id: &str, after: u64) -> Result<String, BusError>;
    /// Check the ledger's integrity (all artifacts when `full`, else the configured sample); JSON report.
    fn verify(&self, full: bool) -> Result<String, BusError>;

    /// Snapshots, oldest first (JSON).
    fn list_snapshots(&self) -> Result<String, BusError>;
    /// A manual snapshot now ("" for no label).
    fn create_snapshot(&self, label: &str) -> Result<String, BusError>;
    /// Pin or unpin a snapshot.
    fn pin_snapshot(&self, id: &str, pinned: bool) -> Result<String, BusError>;
    /// Delete a snapshot.
    fn delete_snapshot(&self, id: &str) -> Result<String, BusError>;

    /// Issue a single-use permission lease (ttl 0: the default); JSON with the token.
    fn issue_lease(&self, tool: &str, tier: u8, ttl_secs: u64) -> Result<String, BusError>;
    /// Permission leases (JSON; `all` includes spent, revoked and expired ones).
    fn list_leases(&self, all: bool) -> Result<String, BusError>;
    /// Revoke an unspent permission lease.
    fn revoke_lease(&self, id: &str) -> Result<String, BusError>;
    /// The effective configuration (TOML, secrets redacted).
    fn get_config(&self) -> Result<String, BusError>;

    /// machina's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// Tasks queued and not yet claimed, over all runs.
    #[zbus(property)]
    fn queue_depth(&self) -> zbus::Result<u64>;
    /// Runs waiting for approval.
    #[zbus(property)]
    fn runs_waiting_approval(&self) -> zbus::Result<u64>;
    /// Workers seen recently.
    #[zbus(property)]
    fn workers_online(&self) -> zbus::Result<u32>;
    /// Each online worker's per-task sandbox preflight, JSON `{worker id: preflight}`.
    #[zbus(property)]
    fn sandbox(&self) -> zbus::Result<String>;
    /// Paused partitions.
    #[zbus(property)]
    fn paused_partitions(&self) -> zbus::Result<Vec<String>>;
}
