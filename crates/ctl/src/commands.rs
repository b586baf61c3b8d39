//! One function per command, each the same shape: call the manager, print, choose the exit status.

use futures::StreamExt;
use machina_bus::{BusAddress, Manager1Proxy, signals};
use serde_json::{Map, Value};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{Cli, Command, LeaseCommand, Output};
use crate::exit::{self, CtlError};
use crate::render;

/// How often `watch` asks for events when no signal arrives (each call also keeps an
/// idle-exiting API alive while someone watches).
const WATCH_POLL: Duration = Duration::from_millis(500);
/// Most events `watch` asks for at once.
const EVENTS_PAGE: usize = 500;

type Result<T> = std::result::Result<T, CtlError>;

/// Run the command; the exit status comes back on success too (watch of a failed run is 1).
pub async fn run(cli: Cli) -> Result<u8> {
    if let Command::Snapshot { command } = &cli.command {
        return snapshot(command, cli.output);
    }
    if let Command::Sign { secret_file, method, path, body } = &cli.command {
        return sign(secret_file, method, path, body.as_deref());
    }
    let address = match cli.address.as_deref() {
        None => BusAddress::System,
        Some(a) => BusAddress::parse(a).map_err(|e| CtlError::new(2, e))?,
    };
    let conn = machina_bus::connect(&address)
        .await?
        .ok_or_else(|| CtlError::new(2, "--address none: machinactl needs a bus"))?;
    let proxy = Manager1Proxy::new(&conn).await?;
    let out = cli.output;
    match cli.command {
        Command::Submit { file, request_id } => {
            let intent = read_intent(&file)?;
            let run = proxy.submit_intent(&intent, request_id.as_deref().unwrap_or("")).await?;
            print_doc(out, &run, render::run_line)
        }
        Command::Run { recipe, inputs } => {
            let inputs = parse_inputs(&inputs)?;
            let run = proxy.start_run(&recipe, &inputs).await?;
            print_doc(out, &run, render::run_line)
        }
        Command::List { status, limit } => {
            let runs = proxy.list_runs(status.as_deref().unwrap_or(""), limit).await?;
            print_doc(out, &runs, render::run_table)
        }
        Command::Status { run } => {
            let detail = proxy.get_run(&run).await?;
            print_doc(out, &detail, render::timeline)
        }
        Command::Approve { run, plan } => {
            let r = proxy.approve_plan(&run, plan.as_deref().unwrap_or("")).await?;
            print_doc(out, &r, render::run_line)
        }
        Command::Retry { run } => print_doc(out, &proxy.retry_run(&run).await?, render::run_line),
        Command::Cancel { run } => print_doc(out, &proxy.cancel_run(&run).await?, render::run_line),
        Command::Watch { run, timeout_secs } => watch(&conn, &proxy, &run, out, timeout_secs).await,
        Command::Pause { partition } => {
            proxy.pause_partition(&partition).await?;
            println!("partition {partition} paused");
            Ok(exit::OK)
        }
        Command::Resume { partition } => {
            proxy.resume_partition(&partition).await?;
            println!("partition {partition} resumed");
            Ok(exit::OK)
        }
        Command::Info => info(&proxy, out).await,
        Command::Snapshot { .. } | Command::Sign { .. } => unreachable!("handled before connecting"),
        Command::Lease { command } => lease(&proxy, command, out).await,
        Command::Config => {
            print!("{}", proxy.get_config().await?);
            Ok(exit::OK)
        }
        Command::Chat { config_dirs, mode, phase_timeout_secs, no_llm } => {
            let phase_timeout = Duration::from_secs(phase_timeout_secs);
            crate::chat::run(&proxy, crate::chat::Options { config_dirs, mode, phase_timeout, no_llm }).await
        }
        Command::Verify { full } => {
            let json = proxy.verify(full).await?;
            print_doc(out, &json, render::verify)?;
            let report: Value = serde_json::from_str(&json).unwrap_or_default();
            let clean = report["violations"].as_array().is_some_and(Vec::is_empty);
            Ok(if clean { exit::OK } else { exit::FAILED })
        }
    }
}

/// Where `machinactl snapshot` finds machina-snapshot: `MACHINA_SNAPSHOT_BIN`, else beside
/// this executable (a source tree), else the installed path.
fn snapshot_binary() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MACHINA_SNAPSHOT_BIN") {
        return p.into();
    }
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("machina-snapshot")));
    beside.filter(|p| p.is_file()).unwrap_or_else(|| "/usr/libexec/machina/machina-snapshot".into())
}

/// Snapshots are root's business (btrfs subvolumes, swapping the state): run machina-snapshot
/// as the caller, and pass its exit status on.
fn snapshot(command: &crate::cli::SnapshotCommand, out: Output) -> Result<u8> {
    let bin = snapshot_binary();
    let mut cmd = std::process::Command::new(&bin);
    if out == Output::Json {
        cmd.arg("--json");
    }
    let status = cmd
        .args(command.to_args())
        .status()
        .map_err(|e| CtlError::new(exit::UNAVAILABLE, format!("cannot run {}: {e}", bin.display())))?;
    Ok(status.code().map_or(exit::FAILED, |c| c.clamp(0, 255) as u8))
}

/// Print `X-Machina-Ts`, `X-Machina-Nonce` and `X-Machina-Signature` for a request.
fn sign(secret_file: &Path, method: &str, path: &str, body: Option<&Path>) -> Result<u8> {
    let read = |p: &Path| -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        let r = if p == Path::new("-") {
            std::io::stdin().read_to_end(&mut buf).map(drop)
        } else {
            std::fs::read(p).map(|b| buf = b)
        };
        r.map_err(|e| CtlError::new(exit::INVALID_INPUT, format!("{}: {e}", p.display())))?;
        Ok(buf)
    };
    let secret = read(secret_file)?.trim_ascii().to_vec();
    if secret.len() < machina_core::signing::SECRET_MIN_BYTES {
        return Err(CtlError::new(exit::INVALID_INPUT, "the HMAC secret must be at least 32 bytes"));
    }
    let body = body.map(read).transpose()?.unwrap_or_default();
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| CtlError::new(exit::FAILED, format!("/dev/urandom: {e}")))?;
    let nonce: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
    let sig = machina_core::signing::sign(&secret, &ts, &nonce, method, path, &body);
    println!("X-Machina-Ts: {ts}\nX-Machina-Nonce: {nonce}\nX-Machina-Signature: {sig}");
    Ok(exit::OK)
}

fn read_intent(file: &Path) -> Result<String> {
    let mut text = String::new();
    if file == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map_err(|e| CtlError::new(exit::FAILED, format!("stdin: {e}")))?;
    } else {
        text = std::fs::read_to_string(file)
            .map_err(|e| CtlError::new(exit::INVALID_INPUT, format!("{}: {e}", file.display())))?;
    }
    serde_json::from_str::<Value>(&text)
        .map_err(|e| CtlError::new(exit::INVALID_INPUT, format!("{}: not JSON: {e}", file.display())))?;
    Ok(text)
}

/// `KEY=VALUE` pairs into a JSON object; a VALUE that parses as JSON is taken as JSON.
pub fn parse_inputs(pairs: &[String]) -> Result<String> {
    let mut map = Map::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(CtlError::new(2, format!("--input {p:?} is not KEY=VALUE")));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        map.insert(k.to_string(), value);
    }
    Ok(Value::Object(map).to_string())
}

fn print_doc(out: Output, json: &str, text: fn(&Value) -> String) -> Result<u8> {
    match out {
        Output::Json => println!("{json}"),
        Output::Text => {
            let v: Value = serde_json::from_str(json)
                .map_err(|e| CtlError::new(exit::FAILED, format!("the service sent invalid JSON: {e}")))?;
            print!("{}", text(&v));
        }
    }
    Ok(exit::OK)
}

async fn lease(proxy: &Manager1Proxy<'_>, command: LeaseCommand, out: Output) -> Result<u8> {
    match command {
        LeaseCommand::Issue { tool, tier, ttl_secs } => {
            print_doc(out, &proxy.issue_lease(&tool, tier, ttl_secs.unwrap_or(0)).await?, render::lease_issued)
        }
        LeaseCommand::List { all } => print_doc(out, &proxy.list_leases(all).await?, render::lease_table),
        LeaseCommand::Revoke { id } => print_doc(out, &proxy.revoke_lease(&id).await?, render::lease_line),
    }
}

async fn info(proxy: &Manager1Proxy<'_>, out: Output) -> Result<u8> {
    let v = serde_json::json!({
        "version": proxy.version().await?,
        "queueDepth": proxy.queue_depth().await?,
        "runsWaitingApproval": proxy.runs_waiting_approval().await?,
        "workersOnline": proxy.workers_online().await?,
        "pausedPartitions": proxy.paused_partitions().await?,
        "sandbox": serde_json::from_str::<Value>(&proxy.sandbox().await?).unwrap_or(Value::Null),
    });
    print_doc(out, &v.to_string(), render::info)
}

/// Follow a run: print each new event, then a progress line, until it reaches a final state.
async fn watch(conn: &zbus::Connection, proxy: &Manager1Proxy<'_>, run: &str, out: Output, timeout: u64) -> Result<u8> {
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_secs(timeout));
    // Subscribe before the first read so no change between the two is missed.
    let mut changes = signals::subscribe(conn, signals::RUN_STATE_CHANGED).await?;
    let mut after = 0u64;
    loop {
        let page: Value = serde_json::from_str(&proxy.events(run, after).await?)
            .map_err(|e| CtlError::new(exit::FAILED, format!("the service sent invalid JSON: {e}")))?;
        let events = page.as_array().cloned().unwrap_or_default();
        for e in &events {
            after = after.max(e["seq"].as_u64().unwrap_or(after));
            match out {
                Output::Json => println!("{e}"),
                Output::Text => println!("{}", render::event_line(e)),
            }
        }
        if !events.is_empty() || after == 0 {
            let detail: Value = serde_json::from_str(&proxy.get_run(run).await?)
                .map_err(|e| CtlError::new(exit::FAILED, format!("the service sent invalid JSON: {e}")))?;
            if out == Output::Text {
                println!("{}", render::progress(&detail));
            }
            if let Some(code) = final_status(&detail) {
                return Ok(code);
            }
        }
        if events.len() >= EVENTS_PAGE {
            continue;
        }
        let wait = match deadline {
            Some(d) if Instant::now() >= d => {
                return Err(CtlError::new(exit::FAILED, format!("run {run} did not finish within {timeout} s")));
            }
            Some(d) => WATCH_POLL.min(d - Instant::now()),
            None => WATCH_POLL,
        };
        // Wake at once on a state change of this run; otherwise poll.
        let _ = tokio::time::timeout(wait, async {
            while let Some(Ok(msg)) = changes.next().await {
                if msg.body().deserialize::<(String, String)>().is_ok_and(|(id, _)| id == run) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The exit status for a run in a final state, `None` while it is still going.
fn final_status(detail: &Value) -> Option<u8> {
    match detail["status"].as_str()? {
        "succeeded" => Some(exit::OK),
        "failed" | "retries_exceeded" | "canceled" => Some(exit::FAILED),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_take_json_or_strings() {
        let v: Value =
            serde_json::from_str(&parse_inputs(&["n=3".into(), "w=[\"a\"]".into(), "s=hi".into()]).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"n": 3, "w": ["a"], "s": "hi"}));
        assert_eq!(parse_inputs(&["=x".into()]).unwrap_err().status, 2);
        assert_eq!(parse_inputs(&["novalue".into()]).unwrap_err().status, 2);
    }

    #[test]
    fn final_states_map_to_exit_statuses() {
        assert_eq!(final_status(&serde_json::json!({"status": "succeeded"})), Some(0));
        assert_eq!(final_status(&serde_json::json!({"status": "canceled"})), Some(1));
        assert_eq!(final_status(&serde_json::json!({"status": "executing"})), None);
    }
}
