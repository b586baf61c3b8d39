//! The toolbox: every tool a task may name, behind one dispatch, and the permission-lease
//! gate in front of tools above the free tier.
//!
//! `shell` and plugins run as sandboxed child processes (machina-task-exec); `http` and
//! `file` run inside the worker process on the task's behalf, confined by their own
//! policies (machina-tools). Every outcome has the shape of a shell run, so the rest of the
//! worker commits them alike.

use machina_core::ErrCode;
use machina_core::config::{LeaseSettings, Settings};
use machina_ledger::{ClaimedTask, Ledger, LedgerError};
use machina_tools::file::{FilePolicy, FileRoot};
use machina_tools::http::{HttpPolicy, HttpTool};
use machina_tools::plugin::{CapSet, PluginCatalog, PluginPolicy};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::shell::{RunLimits, ShellOutcome, ShellPolicy};

/// Every tool of one worker process, built once from the settings.
pub struct Toolbox {
    shell: Arc<ShellPolicy>,
    /// None when the http settings could not be turned into a client (logged at startup):
    /// http tasks then fail with BOOT_FAIL (retried), nothing else is affected.
    http: Option<HttpTool>,
    file: Arc<FilePolicy>,
    plugins: PluginCatalog,
    leases: LeaseSettings,
    max_timeout: Duration,
}

impl Toolbox {
    /// Build the tools from `settings`, logging what is refused (plugins) or broken.
    pub fn new(settings: &Settings) -> Self {
        let shell = Arc::new(
            ShellPolicy::new(&settings.tools.shell)
                .with_sandbox(&settings.sandbox)
                .with_plugin_memory_bytes(settings.tools.plugins.memory_bytes),
        );
        let http = match HttpTool::new(http_policy(settings)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "the http tool is unavailable");
                None
            }
        };
        let file = Arc::new(FilePolicy {
            roots: (settings.tools.file.roots.iter())
                .map(|r| FileRoot { name: r.name.clone(), path: r.path.clone(), writable: r.writable })
                .collect(),
            max_read_bytes: settings.tools.file.max_read_bytes,
            max_write_bytes: settings.tools.file.max_write_bytes,
        });
        let p = &settings.tools.plugins;
        let allowed = CapSet::from_names(p.allowed_capabilities.iter()).unwrap_or_else(|e| {
            tracing::error!("tools.plugins.allowed_capabilities: {e}; no plugin capability is allowed");
            CapSet::empty()
        });
        let plugins = machina_tools::plugin::load(&PluginPolicy {
            dir: p.dir.clone(),
            allowed,
            allow_undeclared: p.allow_undeclared,
        });
        for r in plugins.refused() {
            tracing::warn!(manifest = %r.source.display(), "plugin refused: {}", r.reason);
        }
        for pl in plugins.plugins() {
            tracing::info!(plugin = %pl.name, path = %pl.path.display(), caps = %pl.caps, tier = pl.tier, "plugin loaded");
        }
        Self {
            shell,
            http,
            file,
            plugins,
            leases: settings.leases.clone(),
            max_timeout: Duration::from_secs(settings.worker.max_task_timeout_secs),
        }
    }

    /// The shell policy (its wrapper and sandbox settings serve plugins too).
    pub fn shell(&self) -> &ShellPolicy {
        &self.shell
    }

    /// The tier of `tool`, or None if no such tool exists here.
    fn tier(&self, tool: &str) -> Option<u8> {
        match tool {
            "shell" | "http" | "file" => Some(self.leases.tier_of(tool)),
            other => self.plugins.get(other).map(|p| p.tier),
        }
    }

    /// Run `task` in `dir`: check its lease if its tool needs one, then run the tool.
    pub async fn run(
        &self,
        ledger: &Ledger,
        task: &ClaimedTask,
        dir: &Path,
        output_cap: usize,
        cancel: CancellationToken,
    ) -> ShellOutcome {
        let spec = &task.spec;
        let Some(tier) = self.tier(&spec.tool) else {
            return refused(ErrCode::PolicyDenied, format!("tool {:?} is not available in this worker", spec.tool));
        };
        if tier > self.leases.free_tier
            && let Err(outcome) = self.check_lease(ledger, task, tier).await
        {
            return outcome;
        }
        let limits = RunLimits { timeout: Duration::from_secs(spec.timeout_secs).min(self.max_timeout), output_cap };
        let env = [("MACHINA_TASK_KEY", task.task_key.clone()), ("MACHINA_ATTEMPT", task.attempt.to_string())];
        match spec.tool.as_str() {
            "shell" => crate::shell::run(&self.shell, &spec.argv, dir, &env, &limits, cancel).await,
            "http" => self.http(&spec.argv, &limits, cancel).await,
            "file" => self.file(&spec.argv, dir, &limits).await,
            name => {
                let plugin = self.plugins.get(name).expect("tier() found it");
                crate::plugin::run(&self.shell, plugin, &spec.argv, dir, &env, &limits, cancel).await
            }
        }
    }

    /// Consume the task's lease; Err is the outcome to record instead of running the tool.
    async fn check_lease(&self, ledger: &Ledger, task: &ClaimedTask, tier: u8) -> Result<(), ShellOutcome> {
        let tool = &task.spec.tool;
        let Some(token) = task.spec.lease.as_deref() else {
            return Err(refused(
                ErrCode::PolicyDenied,
                format!(
                    "tool {tool:?} is tier {tier}, above the free tier {}: the task needs a permission lease \
                     (machinactl lease issue --tool {tool} --tier {tier})",
                    self.leases.free_tier
                ),
            ));
        };
        let hash = machina_core::lease::token_sha256(token);
        match ledger.consume_lease(&hash, tool, tier, &task.task_key).await {
            Ok(lease) => {
                tracing::info!(lease_id = %lease.id, tool = %tool, tier, "permission lease consumed");
                Ok(())
            }
            Err(LedgerError::PolicyViolation(m)) => {
                tracing::warn!(tool = %tool, tier, "{m}");
                Err(refused(ErrCode::PolicyDenied, m))
            }
            // The ledger could not answer: not the task's fault, retried.
            Err(e) => Err(refused(ErrCode::BootFail, format!("checking the permission lease: {e}"))),
        }
    }

    async fn http(&self, argv: &[String], limits: &RunLimits, cancel: CancellationToken) -> ShellOutcome {
        let Some(tool) = &self.http else {
            return refused(ErrCode::BootFail, "the http tool is unavailable in this worker (see its log)".into());
        };
        let started = Instant::now();
        let req = match machina_tools::http::request_from_argv(argv) {
            Ok(r) => r,
            Err(e) => return refused(e.err_code(), e.to_string()),
        };
        let result = tokio::select! {
            r = tool.fetch(&req) => r,
            _ = tokio::time::sleep(limits.timeout) => return timed(ErrCode::Timeout, "task timeout", started),
            _ = cancel.cancelled() => return timed(ErrCode::Canceled, "canceled", started),
        };
        let wall_ms = started.elapsed().as_millis() as i64;
        match result {
            Ok(resp) => {
                let mut head = format!("HTTP {} from {}\n", resp.status, resp.remote);
                for (k, v) in &resp.headers {
                    head.push_str(&format!("{k}: {v}\n"));
                }
                let mut body = resp.body;
                body.truncate(limits.output_cap);
                let ok = resp.status < 400;
                ShellOutcome {
                    err_code: (!ok).then_some(ErrCode::CmdNonzero),
                    exit_status: Some(if ok { 0 } else { i32::from(resp.status) }),
                    stdout: body,
                    stderr: head.into_bytes(),
                    wall_ms,
                }
            }
            Err(e) => ShellOutcome { wall_ms, ..refused(e.err_code(), e.to_string()) },
        }
    }

    async fn file(&self, argv: &[String], dir: &Path, limits: &RunLimits) -> ShellOutcome {
        let started = Instant::now();
        let op = match machina_tools::file::op_from_argv(argv) {
            Ok(op) => op,
            Err(e) => return refused(e.err_code(), e.to_string()),
        };
        let (policy, dir) = (self.file.clone(), dir.to_path_buf());
        let done = tokio::task::spawn_blocking(move || machina_tools::file::perform(&policy, &dir, &op)).await;
        let wall_ms = started.elapsed().as_millis() as i64;
        match done {
            Ok(Ok(out)) => {
                let mut stdout = out.stdout;
                stdout.truncate(limits.output_cap);
                ShellOutcome { err_code: None, exit_status: Some(0), stdout, stderr: Vec::new(), wall_ms }
            }
            Ok(Err(e)) => ShellOutcome { wall_ms, ..refused(e.err_code(), e.to_string()) },
            Err(e) => refused(ErrCode::BootFail, format!("the file tool failed: {e}")),
        }
    }
}

fn http_policy(settings: &Settings) -> HttpPolicy {
    let h = &settings.tools.http;
    HttpPolicy {
        allow_hosts: h.allow_hosts.clone(),
        default_deny: h.default_deny,
        // Validated with the settings.
        allow_addresses: h.allow_addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        timeout: Duration::from_millis(h.timeout_ms),
        max_response_bytes: h.max_response_bytes,
        max_request_bytes: h.max_request_bytes,
        nameservers: h.nameservers.iter().filter_map(|n| n.parse().ok()).collect(),
    }
}

fn refused(code: ErrCode, message: String) -> ShellOutcome {
    ShellOutcome {
        err_code: Some(code),
        exit_status: None,
        stdout: Vec::new(),
        stderr: message.into_bytes(),
        wall_ms: 0,
    }
}

fn timed(code: ErrCode, what: &str, started: Instant) -> ShellOutcome {
    ShellOutcome {
        wall_ms: started.elapsed().as_millis() as i64,
        ..refused(code, format!("http request stopped: {what}"))
    }
}
