//! The D-Bus face of machina-api: `org.machina.Manager1` at `/org/machina/Manager1`.
//!
//! Methods do what the HTTP routes do, through the same code (intake,
//! ledger), and fail with `org.machina.Error.*` names matching the HTTP API's
//! error kinds. Who may call is decided twice: the bus policy file admits only
//! root and `machina-admin` to methods, and every method checks the caller's
//! credentials again here, so a missing or loosened policy file does not open
//! the service. The approver of a plan is the caller's user, looked up from
//! its uid as the bus daemon reports it — never an argument.

use machina_bus::{BusError, signals};
use machina_core::snapshot_request::SnapshotOp;
use machina_ledger::{RunFilter, RunRecord};
use serde_json::{Value, json};
use zbus::message::Header;
use zbus::{Connection, interface};

use crate::AppState;
use crate::error::ApiError;
use crate::routes::intents;

/// How long a worker counts as online after it last checked in.
pub const WORKER_ONLINE_WINDOW_MS: i64 = 30_000;
/// Most events one `Events` call returns.
const EVENTS_PAGE: u32 = 500;

impl From<ApiError> for BusError {
    fn from(e: ApiError) -> Self {
        BusError::from_kind(e.kind, e.message)
    }
}

/// Who is calling, as the bus daemon vouches.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Unix user id.
    pub uid: u32,
    /// User name (the uid as a number when it has no name).
    pub user: String,
}

/// The `org.machina.Manager1` object.
pub struct Manager {
    st: AppState,
}

impl Manager {
    /// The manager over the API's shared state.
    pub fn new(st: AppState) -> Self {
        Self { st }
    }

    /// Start a method call: the service is busy (no idle exit) until the guard drops, and
    /// the caller is authorized.
    async fn enter(&self, conn: &Connection, hdr: &Header<'_>) -> Result<(crate::activity::Busy, Caller), BusError> {
        let busy = self.st.activity.begin();
        Ok((busy, self.caller(conn, hdr).await?))
    }

    /// Look up and authorize the sender of `hdr`: root or a member of the admin group.
    async fn caller(&self, conn: &Connection, hdr: &Header<'_>) -> Result<Caller, BusError> {
        let sender = hdr.sender().ok_or_else(|| BusError::AccessDenied("the call has no sender".into()))?;
        let creds = zbus::fdo::DBusProxy::new(conn)
            .await?
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| BusError::AccessDenied(format!("cannot read the caller's credentials: {e}")))?;
        let uid = creds.unix_user_id().ok_or_else(|| BusError::AccessDenied("the caller has no unix uid".into()))?;
        let groups = creds.unix_group_ids().cloned().unwrap_or_default();
        let admin_group = self.st.settings.bus.admin_group.clone();
        let (user, allowed) = tokio::task::spawn_blocking(move || authorize(uid, &groups, &admin_group))
            .await
            .map_err(|e| BusError::Internal(format!("credential lookup failed: {e}")))?;
        if !allowed {
            tracing::warn!(uid, user = %user, "D-Bus call refused: not root and not in the admin group");
            return Err(BusError::AccessDenied(format!(
                "user {user} (uid {uid}) may not call machina: only root and members of {} may",
                self.st.settings.bus.admin_group
            )));
        }
        Ok(Caller { uid, user })
    }
}

/// The caller's name, and whether it may call: root or a member of `admin_group` (by the
/// supplementary groups the bus reports, or by the group database). Not machina's own user:
/// tasks run as that user, and no machina process calls these methods.
fn authorize(uid: u32, groups: &[u32], admin_group: &str) -> (String, bool) {
    use nix::unistd::{Gid, Group, Uid, User};
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let name = user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| uid.to_string());
    if uid == 0 {
        return (name, true);
    }
    let Some(group) = Group::from_name(admin_group).ok().flatten() else { return (name, false) };
    let member = groups.contains(&group.gid.as_raw())
        || user.as_ref().is_some_and(|u| u.gid == group.gid || group.mem.contains(&u.name))
        || groups.iter().any(|g| Gid::from_raw(*g) == group.gid);
    (name, member)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, BusError> {
    serde_json::to_string(v).map_err(|e| BusError::Internal(format!("cannot encode the reply: {e}")))
}

#[interface(name = "org.machina.Manager1")]
impl Manager {
    /// Submit an intent: the JSON document POST /enqueue takes. `request_id` ("" for none)
    /// makes the call idempotent. Returns `{"intent": …, "run": …}`.
    async fn submit_intent(
        &self,
        intent_json: &str,
        request_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let (_busy, caller) = self.enter(conn, &hdr).await?;
        let rid = (!request_id.is_empty()).then(|| request_id.to_string());
        let submitted = intents::submit_json(&self.st, intent_json, rid).await?;
        tracing::info!(user = %caller.user, "intent submitted over D-Bus");
        to_json(&submitted.body)
    }

    /// Start a run of `recipe` with `inputs_json` (a JSON object) as its inputs, in the default partition.
    async fn start_run(
        &self,
        recipe: &str,
        inputs_json: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        let inputs: Value = serde_json::from_str(inputs_json)
            .map_err(|e| BusError::InvalidInput(format!("inputs_json is not JSON: {e}")))?;
        if !inputs.is_object() {
            return Err(BusError::InvalidInput("inputs_json must be a JSON object".into()));
        }
        let doc = json!({"goal": format!("run recipe {recipe}"), "recipe": recipe, "inputs": inputs});
        let submitted = intents::submit_json(&self.st, &doc.to_string(), None).await?;
        to_json(&submitted.body)
    }

    /// A run with its steps and tasks (the JSON of GET /runs/{id}).
    async fn get_run(
        &self,
        run_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        to_json(&self.st.ledger.run_detail(run_id).await.map_err(ApiError::from)?)
    }

    /// Runs, newest first; `status` "" for every status; `limit` 1..=api.max_page_size.
    async fn list_runs(
        &self,
        status: &str,
        limit: u32,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        let status = (!status.is_empty()).then(|| status.parse()).transpose().map_err(BusError::InvalidInput)?;
        let max = self.st.settings.api.max_page_size;
        if limit == 0 || limit > max {
            return Err(BusError::InvalidInput(format!("limit must be 1-{max}")));
        }
        let runs = self
            .st
            .ledger
            .list_runs(RunFilter { status, partition_key: None, before: None, limit })
            .await
            .map_err(ApiError::from)?;
        to_json(&json!({"runs": runs}))
    }

    /// Approve a run's plan as the calling user; `plan_sha256` binds the approval to the plan
    /// reviewed ("" approves the plan the run holds).
    async fn approve_plan(
        &self,
        run_id: &str,
        plan_sha256: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let (_busy, caller) = self.enter(conn, &hdr).await?;
        let sha = (!plan_sha256.is_empty()).then(|| plan_sha256.to_string());
        if let Some(s) = sha.as_deref().filter(|s| !machina_ledger::is_sha256_hex(s)) {
            return Err(BusError::InvalidInput(format!("plan_sha256 {s:?} is not 64 lowercase hex digits")));
        }
        let run = self.st.ledger.approve_plan(run_id, &caller.user, sha).await.map_err(ApiError::from)?;
        tracing::info!(run_id = %run.id, approver = %caller.user, uid = caller.uid, "plan approved over D-Bus");
        announce_on(conn, &run).await;
        to_json(&run)
    }

    /// Retry a failed run from its failed step.
    async fn retry_run(
        &self,
        run_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        let run = self.st.ledger.retry_run(run_id).await.map_err(ApiError::from)?;
        announce_on(conn, &run).await;
        to_json(&run)
    }

    /// Cancel a run.
    async fn cancel_run(
        &self,
        run_id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        let run = self.st.ledger.cancel_run(run_id).await.map_err(ApiError::from)?;
        announce_on(conn, &run).await;
        to_json(&run)
    }

    /// Stop claiming new tasks and compiles in a partition; running tasks finish.
    async fn pause_partition(
        &self,
        partition: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        self.set_paused(partition, true, conn, &hdr).await
    }

    /// Claim work in a paused partition again.
    async fn resume_partition(
        &self,
        partition: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), BusError> {
        self.set_paused(partition, false, conn, &hdr).await?;
        let _ = signals::tasks_queued(conn, "", 0).await;
        Ok(())
    }

    /// A run's events after sequence number `after` (the JSON array of GET /runs/{id}/events).
    async fn events(
        &self,
        run_id: &str,
        after: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        // Not found is an error here, not an empty list, so a typo does not watch forever.
        self.st.ledger.run_status(run_id).await.map_err(ApiError::from)?;
        let after = i64::try_from(after).map_err(|_| BusError::InvalidInput("after is too large".into()))?;
        to_json(&self.st.ledger.events(run_id, after, EVENTS_PAGE).await.map_err(ApiError::from)?)
    }

    /// Check integrity: `PRAGMA quick_check`, the SQL oracles and the artifacts' bytes (all of
    /// them when `full`, else `maintenance.verify_sample`). Returns the report as JSON; the
    /// call succeeds either way, `violations` says what is wrong.
    async fn verify(
        &self,
        full: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        let sample = if full { usize::MAX } else { self.st.settings.maintenance.verify_sample };
        let recent_ms = (self.st.settings.maintenance.artifact_grace_secs * 1000) as i64;
        let report = self.st.ledger.verify(sample, recent_ms).await.map_err(ApiError::from)?;
        for v in &report.violations {
            tracing::error!(message_id = machina_core::log::MSG_VERIFY_FAILED, check = %v.check,
                "integrity violation: {}: {}", v.check, v.detail);
        }
        to_json(&report)
    }

    /// Snapshots of the state, oldest first (JSON), from the snapshot service.
    async fn list_snapshots(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        self.snapshot_op(conn, &hdr, SnapshotOp::List).await
    }

    /// Take a manual snapshot now (label "" for none); returns the outcome (JSON).
    async fn create_snapshot(
        &self,
        label: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let label = (!label.is_empty()).then(|| label.to_string());
        self.snapshot_op(conn, &hdr, SnapshotOp::Create { label }).await
    }

    /// Pin (never deleted by retention) or unpin a snapshot.
    async fn pin_snapshot(
        &self,
        id: &str,
        pinned: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        self.snapshot_op(conn, &hdr, SnapshotOp::Pin { snapshot: id.to_string(), pinned }).await
    }

    /// Delete a snapshot (not a pinned one).
    async fn delete_snapshot(
        &self,
        id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        self.snapshot_op(conn, &hdr, SnapshotOp::Delete { snapshot: id.to_string() }).await
    }

    /// Issue a single-use permission lease for `tool` at `tier`, valid `ttl_secs` (0: the
    /// configured default), issued by the calling user. Returns JSON with the token: the only
    /// time it is shown.
    async fn issue_lease(
        &self,
        tool: &str,
        tier: u8,
        ttl_secs: u64,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let (_busy, caller) = self.enter(conn, &hdr).await?;
        let ttl = (ttl_secs > 0).then_some(ttl_secs);
        to_json(&crate::leases::issue(&self.st, tool, tier, ttl, &caller.user).await?)
    }

    /// Permission leases (JSON, never tokens): usable ones, or with `all` every one not yet collected.
    async fn list_leases(
        &self,
        all: bool,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        to_json(&self.st.ledger.list_leases(all).await.map_err(ApiError::from)?)
    }

    /// Revoke an unspent permission lease.
    async fn revoke_lease(
        &self,
        id: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let (_busy, caller) = self.enter(conn, &hdr).await?;
        let lease = self.st.ledger.revoke_lease(id).await.map_err(ApiError::from)?;
        tracing::info!(lease_id = %id, by = %caller.user, "permission lease revoked over D-Bus");
        to_json(&lease)
    }

    /// The effective configuration as TOML, secrets redacted.
    async fn get_config(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, BusError> {
        let _busy = self.enter(conn, &hdr).await?;
        Ok(self.st.settings.to_redacted_toml())
    }

    /// machina's version.
    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// Tasks queued and not yet claimed, plus runs waiting to be compiled.
    #[zbus(property)]
    async fn queue_depth(&self) -> zbus::fdo::Result<u64> {
        Ok(self.overview().await?.queue_depth)
    }

    /// Runs waiting at the approval gate.
    #[zbus(property)]
    async fn runs_waiting_approval(&self) -> zbus::fdo::Result<u64> {
        Ok(self.overview().await?.runs_waiting_approval)
    }

    /// Workers that checked in within the last 30 seconds.
    #[zbus(property)]
    async fn workers_online(&self) -> zbus::fdo::Result<u32> {
        Ok(self.overview().await?.workers_online)
    }

    /// What each online worker's per-task sandbox enforces: JSON `{worker id: preflight}`
    /// (landlock ABI, TCP and scope support, no_new_privs, seccomp, capabilities).
    #[zbus(property)]
    async fn sandbox(&self) -> zbus::fdo::Result<String> {
        let _busy = self.st.activity.begin();
        let workers = self
            .st
            .ledger
            .workers(WORKER_ONLINE_WINDOW_MS)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        let map: serde_json::Map<String, Value> =
            workers.into_iter().map(|w| (w.id, w.sandbox.unwrap_or(Value::Null))).collect();
        Ok(Value::Object(map).to_string())
    }

    /// Partitions whose new work is not being claimed.
    #[zbus(property)]
    async fn paused_partitions(&self) -> zbus::fdo::Result<Vec<String>> {
        Ok(self.overview().await?.paused_partitions)
    }
}

impl Manager {
    async fn snapshot_op(&self, conn: &Connection, hdr: &Header<'_>, op: SnapshotOp) -> Result<String, BusError> {
        let (_busy, caller) = self.enter(conn, hdr).await?;
        let s = &self.st.settings.snapshot;
        crate::snapshots::ask(s.request_dir.clone(), s.result_dir.clone(), &caller.user, op).await
    }

    async fn overview(&self) -> zbus::fdo::Result<machina_ledger::Overview> {
        let _busy = self.st.activity.begin();
        self.st.ledger.overview(WORKER_ONLINE_WINDOW_MS).await.map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    async fn set_paused(
        &self,
        partition: &str,
        paused: bool,
        conn: &Connection,
        hdr: &Header<'_>,
    ) -> Result<(), BusError> {
        let (_busy, caller) = self.enter(conn, hdr).await?;
        intents::check_partition_key(partition)?;
        self.st.ledger.set_partition_paused(partition, paused).await.map_err(ApiError::from)?;
        tracing::info!(partition, paused, user = %caller.user, "partition {}", if paused { "paused" } else { "resumed" });
        Ok(())
    }
}

/// Tell the bus about a run an HTTP request just changed (see [`announce_on`]).
pub async fn announce(st: &AppState, run: &RunRecord) {
    if let Some(bus) = &st.bus {
        announce_on(bus, run).await;
    }
}

/// Tell the bus about a run the API just changed: its new state, and wake workers when
/// it has work for them. Best effort: signals are hints, the ledger is the truth. (The
/// manager's methods pass their own connection: the state they were built with predates it.)
pub async fn announce_on(bus: &Connection, run: &RunRecord) {
    let status = run.status.as_str();
    // The wake-up first: a worker's start is what someone waits for.
    if matches!(status, "queued" | "executing") {
        let _ = signals::tasks_queued(bus, &run.id, 0).await;
    }
    if let Err(e) = signals::run_state_changed(bus, &run.id, status).await {
        tracing::warn!(run_id = %run.id, "cannot emit RunStateChanged: {e}");
    }
}
