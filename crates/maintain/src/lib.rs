//! machina-maintain: the hourly maintenance run (machina-maintain.timer).
//!
//! In order: expire dedup entries and vanished workers; reclaim task leases whose
//! owners stopped renewing them; prune finished runs past `maintenance.run_retention_days`
//! and the artifacts nothing references any more; checkpoint and optimise the ledger;
//! verify integrity. Each result is logged (MESSAGE_IDs maintenance done / verify failed);
//! a violation makes the run exit 1 so `systemctl --failed` shows it.

use clap::Parser;
use machina_core::log::{MSG_MAINTENANCE_DONE, MSG_VERIFY_FAILED};
use machina_ledger::{Ledger, PruneReport, VerifyReport};
use serde::Serialize;
use std::process::ExitCode;

const DAY_MS: i64 = 86_400_000;

/// Command line of machina-maintain.
#[derive(Debug, Parser)]
#[command(
    name = "machina-maintain",
    version,
    about = "machina's maintenance: expire, reclaim, prune, checkpoint, verify"
)]
pub struct Args {
    /// Configuration and state directories.
    #[command(flatten)]
    pub paths: machina_daemon::PathArgs,
    /// Only verify (no expiry, pruning or checkpoint).
    #[arg(long)]
    pub verify_only: bool,
    /// Hash every artifact instead of the configured rotating sample.
    #[arg(long)]
    pub full: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What one maintenance run did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Dedup entries expired.
    pub dedup_expired: u64,
    /// Worker check-ins forgotten.
    pub workers_forgotten: u64,
    /// Task and compile leases reclaimed.
    pub leases_reclaimed: u64,
    /// Expired permission leases collected.
    pub permission_leases_expired: u64,
    /// What pruning removed.
    pub pruned: PruneReport,
    /// WAL frames checkpointed.
    pub wal_frames_checkpointed: i64,
    /// The integrity check.
    pub verify: VerifyReport,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    machina_daemon::init_logging("machina-maintain");
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("machina-maintain: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            }
            if report.verify.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("machina-maintain: {e:#}");
            tracing::error!("{e:#}");
            let config = e.downcast_ref::<machina_core::config::ConfigError>().is_some();
            ExitCode::from(if config { machina_core::config::EXIT_CONFIG } else { 1 })
        }
    }
}

async fn run(args: Args) -> anyhow::Result<Report> {
    let paths = args.paths.clone();
    let setup = tokio::task::spawn_blocking(move || machina_daemon::setup(paths, |_| {})).await??;
    maintain(&setup.ledger, &setup.settings.maintenance, args.verify_only, args.full).await
}

/// One maintenance pass over `ledger`.
pub async fn maintain(
    ledger: &Ledger,
    cfg: &machina_core::config::MaintenanceSettings,
    verify_only: bool,
    full: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    if !verify_only {
        (report.dedup_expired, report.workers_forgotten) = ledger.expire((cfg.worker_gone_secs * 1000) as i64).await?;
        report.leases_reclaimed = ledger.reclaim(None).await? as u64;
        report.permission_leases_expired = ledger.expire_leases().await?;
        if cfg.run_retention_days > 0 {
            let retention = cfg.run_retention_days as i64 * DAY_MS;
            report.pruned = ledger.prune(retention, (cfg.artifact_grace_secs * 1000) as i64).await?;
        }
        report.wal_frames_checkpointed = ledger.checkpoint_and_optimize().await?.2;
    }
    let recent_ms = (cfg.artifact_grace_secs * 1000) as i64;
    report.verify = ledger.verify(if full { usize::MAX } else { cfg.verify_sample }, recent_ms).await?;
    for v in &report.verify.violations {
        tracing::error!(message_id = MSG_VERIFY_FAILED, check = %v.check, "integrity violation: {}: {}", v.check, v.detail);
    }
    let p = &report.pruned;
    tracing::info!(
        message_id = MSG_MAINTENANCE_DONE,
        dedup_expired = report.dedup_expired,
        leases_reclaimed = report.leases_reclaimed,
        permission_leases_expired = report.permission_leases_expired,
        runs_pruned = p.runs,
        artifacts_pruned = p.artifacts,
        artifacts_checked = report.verify.artifacts_checked,
        violations = report.verify.violations.len(),
        "maintenance done: {} dedup expired, {} leases reclaimed, {} permission leases expired, {} runs and {} artifacts ({} bytes) pruned, \
         {} of {} artifacts verified, {} violation(s)",
        report.dedup_expired,
        report.leases_reclaimed,
        report.permission_leases_expired,
        p.runs,
        p.artifacts,
        p.artifact_bytes,
        report.verify.artifacts_checked,
        report.verify.artifacts_total,
        report.verify.violations.len()
    );
    Ok(report)
}
