//! Text output of `machinactl` (the `--output text` default). JSON output is the service's own.

use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// Milliseconds since the epoch as UTC `HH:MM:SS.mmm` (dates are in the JSON output).
fn clock(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else { return "--:--:--".into() };
    let day_ms = ms.rem_euclid(86_400_000);
    let (h, m, sec, milli) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60, day_ms % 1000);
    format!("{h:02}:{m:02}:{sec:02}.{milli:03}")
}

/// One line for a run record.
pub fn run_line(run: &Value) -> String {
    let mut line = format!(
        "{}  {}  recipe={} partition={}",
        s(&run["id"]),
        s(&run["status"]),
        s(&run["recipe"]),
        s(&run["queuePartitionKey"])
    );
    if let Some(sha) = run["planSha256"].as_str() {
        let _ = write!(line, " plan={}", &sha[..sha.len().min(12)]);
    }
    if let Some(code) = run["errCode"].as_str() {
        let _ = write!(line, " error={code}");
    }
    line.push('\n');
    line
}

/// A table of runs (`{"runs": [...]}` or a bare array).
pub fn run_table(v: &Value) -> String {
    let runs = v["runs"].as_array().or_else(|| v.as_array()).cloned().unwrap_or_default();
    let mut out = format!("{:<36}  {:<16}  {:<16}  {:<12}  UPDATED\n", "RUN", "STATUS", "RECIPE", "PARTITION");
    for r in &runs {
        let _ = writeln!(
            out,
            "{:<36}  {:<16}  {:<16}  {:<12}  {}",
            s(&r["id"]),
            s(&r["status"]),
            s(&r["recipe"]),
            s(&r["queuePartitionKey"]),
            clock(&r["updatedAt"])
        );
    }
    let _ = writeln!(out, "{} run(s)", runs.len());
    out
}

/// A run as a readable timeline: its steps in order, then its tasks.
pub fn timeline(d: &Value) -> String {
    let mut out = run_line(d);
    if let Some(who) = d["approvedBy"].as_str() {
        let _ = writeln!(out, "  approved by {who}");
    }
    if let Some(msg) = d["errorMessage"].as_str() {
        let _ = writeln!(out, "  error: {msg}");
    }
    if let Some(next) = d["nextAction"].as_str() {
        let _ = writeln!(out, "  next: {next}");
    }
    out.push_str("steps:\n");
    for st in d["steps"].as_array().into_iter().flatten() {
        let _ = write!(
            out,
            "  {}  {:<10} {:<10} gen {}",
            clock(&st["at"]),
            s(&st["step"]),
            s(&st["outcome"]),
            st["generation"]
        );
        if let Some(code) = st["errCode"].as_str() {
            let _ = write!(out, "  {code}");
        }
        if let Some(detail) = st["detail"].as_str() {
            let _ = write!(out, "  {detail}");
        }
        out.push('\n');
    }
    let tasks = d["tasks"].as_array().cloned().unwrap_or_default();
    if !tasks.is_empty() {
        out.push_str("tasks:\n");
    }
    for t in &tasks {
        let key = s(&t["taskKey"]);
        let _ = write!(
            out,
            "  #{:<3} {:<24} {:<10} attempt {}  key {}",
            t["index"],
            s(&t["spec"]["name"]),
            s(&t["status"]),
            t["attempt"],
            &key[..key.len().min(12)]
        );
        if let Some(code) = t["errCode"].as_str() {
            let _ = write!(out, "  {code}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{}", progress(d));
    out
}

/// One line per event.
pub fn event_line(e: &Value) -> String {
    let data = &e["data"];
    let what = match s(&e["kind"]) {
        "state_changed" => format!("state {} -> {}", s(&data["from"]), s(&data["to"])),
        "task_claimed" => {
            format!("task {} attempt {} claimed by {}", short(&data["taskKey"]), data["attempt"], s(&data["owner"]))
        }
        "task_finished" => {
            let mut m = format!("task {} attempt {} {}", short(&data["taskKey"]), data["attempt"], s(&data["status"]));
            if let Some(code) = data["errCode"].as_str() {
                let _ = write!(m, " ({code})");
            }
            m
        }
        "approval_required" => format!("approval required for plan {}", short(&data["planSha256"])),
        "tasks_queued" => format!("{} task(s) queued", data["count"]),
        other => format!("{other} {data}"),
    };
    format!("{}  #{:<4} {what}", clock(&e["at"]), e["seq"])
}

fn short(v: &Value) -> &str {
    let t = s(v);
    &t[..t.len().min(12)]
}

/// `status: N/M tasks succeeded, F failed, R running`.
pub fn progress(d: &Value) -> String {
    let tasks = d["tasks"].as_array().cloned().unwrap_or_default();
    let count = |st: &str| tasks.iter().filter(|t| t["status"] == st).count();
    format!(
        "{}: {}/{} tasks succeeded, {} failed, {} running, {} queued",
        s(&d["status"]),
        count("succeeded"),
        tasks.len(),
        count("failed"),
        count("leased"),
        count("queued")
    )
}

/// A verification report.
pub fn verify(v: &Value) -> String {
    let violations = v["violations"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{} of {} artifacts hashed; {} violation(s)\n",
        v["artifactsChecked"],
        v["artifactsTotal"],
        violations.len()
    );
    for x in &violations {
        let _ = writeln!(out, "  {}: {}", s(&x["check"]), s(&x["detail"]));
    }
    out
}

/// The service's properties.
pub fn info(v: &Value) -> String {
    let paused: Vec<&str> = v["pausedPartitions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    format!(
        "version:               {}\nqueue depth:           {}\nruns waiting approval: {}\nworkers online:        {}\npaused partitions:     {}\n",
        s(&v["version"]),
        v["queueDepth"],
        v["runsWaitingApproval"],
        v["workersOnline"],
        if paused.is_empty() { "none".to_string() } else { paused.join(", ") }
    ) + &sandbox_lines(&v["sandbox"])
}

/// One line per worker: what its tasks' sandbox enforces.
fn sandbox_lines(v: &Value) -> String {
    let mut out = String::new();
    for (worker, p) in v.as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "sandbox of worker {worker}: landlock ABI {} (tcp {}, scopes {}), no_new_privs {}, capabilities {}",
            p["landlock_abi"],
            p["landlock_network"],
            p["landlock_scopes"],
            p["no_new_privs"],
            p["effective_capabilities"]
        );
    }
    out
}

/// A lease just issued: its token on its own line (for scripts: `| tail -1`).
pub fn lease_issued(v: &Value) -> String {
    format!("{}{}\n", lease_line(v), v["token"].as_str().unwrap_or(""))
}

/// One lease.
pub fn lease_line(v: &Value) -> String {
    let state = if !v["revoked_at_ms"].is_null() {
        "revoked"
    } else if !v["consumed_by"].is_null() {
        "used"
    } else {
        "usable"
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    format!(
        "lease {} tool={} tier={} issued_by={} expires_at_ms={} {state}\n",
        s("id"),
        s("tool"),
        v["tier"],
        s("issued_by"),
        v["expires_at_ms"]
    )
}

/// Leases, one per line.
pub fn lease_table(v: &Value) -> String {
    let rows = v.as_array().map(|a| a.iter().map(lease_line).collect::<String>()).unwrap_or_default();
    if rows.is_empty() { "no leases\n".into() } else { rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(&json!(3_723_004)), "01:02:03.004");
        assert_eq!(clock(&json!(null)), "--:--:--");
    }

    #[test]
    fn progress_counts_task_states() {
        let d = json!({"status": "executing", "tasks": [{"status": "succeeded"}, {"status": "leased"}, {"status": "queued"}]});
        assert_eq!(progress(&d), "executing: 1/3 tasks succeeded, 0 failed, 1 running, 1 queued");
    }

    #[test]
    fn events_read_as_sentences() {
        let e =
            json!({"seq": 4, "kind": "state_changed", "data": {"from": "compiling", "to": "waiting_input"}, "at": 0});
        assert!(event_line(&e).ends_with("state compiling -> waiting_input"), "{}", event_line(&e));
    }
}
