//! Stopping and starting machina's units around a restore (systemctl), so nothing
//! writes to the state while it is swapped.

use anyhow::{Context, bail};
use std::process::Command;

/// The units that write to the state or start what does. The socket goes too: a request
/// during the restore must not start the API.
const UNITS: [&str; 5] = [
    "machina-api.socket",
    "machina-api.service",
    "machina-worker@*.service",
    "machina-maintain.timer",
    "machina-maintain.service",
];

fn systemd_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

fn active_units() -> anyhow::Result<Vec<String>> {
    let out = Command::new("systemctl")
        .args(["list-units", "--state=active,activating,reloading", "--plain", "--no-legend", "--no-pager"])
        .args(UNITS)
        .output()
        .context("running systemctl")?;
    if !out.status.success() {
        bail!("systemctl list-units failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect())
}

/// Refuse when machina runs and `stop` is false; otherwise stop what runs and return it.
pub fn stop_for_restore(stop: bool) -> anyhow::Result<Vec<String>> {
    if !systemd_running() {
        tracing::warn!("not running under systemd: make sure no machina process uses the state while it is restored");
        return Ok(Vec::new());
    }
    let active = active_units()?;
    if active.is_empty() {
        return Ok(active);
    }
    if !stop {
        bail!("machina is running ({}): stop it first, or pass --stop to stop and restart it", active.join(", "));
    }
    // Masked for the restore: nothing (a request on the socket, a D-Bus activation) may start
    // the API or a worker while the state is swapped.
    systemctl(&["mask", "--runtime", "machina-api.service", "machina-api.socket", "machina-worker@.service"])?;
    let status = Command::new("systemctl").arg("stop").args(&active).status().context("running systemctl stop")?;
    if !status.success() {
        bail!("systemctl stop {} failed", active.join(" "));
    }
    Ok(active)
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl").args(args).status().context("running systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed", args.join(" "));
    }
    Ok(())
}

/// Start again what [`stop_for_restore`] stopped (the socket before the services).
pub fn start_again(units: &[String]) -> anyhow::Result<()> {
    if units.is_empty() {
        return Ok(());
    }
    systemctl(&["unmask", "--runtime", "machina-api.service", "machina-api.socket", "machina-worker@.service"])?;
    let status = Command::new("systemctl").arg("start").args(units).status().context("running systemctl start")?;
    if !status.success() {
        bail!("systemctl start {} failed: start them by hand", units.join(" "));
    }
    Ok(())
}
