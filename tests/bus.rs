//! D-Bus end to end: real machina-api and machina-worker on a private dbus-daemon,
//! driven by the real machinactl.

mod common;

use common::dbus::PrivateBus;
use common::{Machina, machinactl};
use serde_json::Value;
use std::time::Duration;

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "machinactl failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn start(bus: &PrivateBus, extra: &str) -> Machina {
    let mut m = Machina::new(&format!("[bus]\naddress = \"{}\"\n{extra}", bus.address));
    m.start_api();
    m
}

#[test]
fn operator_journey_over_dbus() {
    let bus = PrivateBus::start();
    let mut m = start(&bus, "");
    m.start_worker("w1");
    let a = bus.address.as_str();
    let intent = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/intent.json");

    let submitted = json_of(&machinactl(a, None, &["--output", "json", "submit", intent, "--request-id", "dbus-1"]));
    let run = submitted["run"]["id"].as_str().unwrap().to_string();
    // Idempotent: the same request id and body gives the same run.
    let again = json_of(&machinactl(a, None, &["--output", "json", "submit", intent, "--request-id", "dbus-1"]));
    assert_eq!(again["run"]["id"], run.as_str());

    let waiting = m.wait_status(&run, "waiting_input");
    let plan = waiting["planSha256"].as_str().unwrap();
    let info = json_of(&machinactl(a, None, &["--output", "json", "info"]));
    assert!(info["runsWaitingApproval"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["workersOnline"].as_u64().unwrap() >= 1, "{info}");
    // Each worker's sandbox preflight: as a D-Bus property and in /health.
    assert!(info["sandbox"]["w1"]["landlock_abi"].is_u64(), "{info}");
    let (_, health) = m.get("/health");
    assert_eq!(health["workers"][0]["id"], "w1", "{health}");
    assert!(health["workers"][0]["sandbox"]["no_new_privs"].is_boolean(), "{health}");

    // A plan other than the one reviewed is refused with a named error and exit 4.
    let wrong = machinactl(a, None, &["approve", &run, "--plan", &"0".repeat(64)]);
    assert_eq!(wrong.status.code(), Some(4), "{}", String::from_utf8_lossy(&wrong.stderr));
    let approved = json_of(&machinactl(a, None, &["--output", "json", "approve", &run, "--plan", plan]));
    // The approver is the caller's user as the bus vouches for it, not an argument.
    assert_eq!(approved["approvedBy"], "root");

    let watch = machinactl(a, None, &["watch", &run, "--timeout-secs", "60"]);
    let text = String::from_utf8_lossy(&watch.stdout);
    assert_eq!(watch.status.code(), Some(0), "watch: {text}\n{}", String::from_utf8_lossy(&watch.stderr));
    assert!(text.contains("succeeded"), "{text}");

    let status = machinactl(a, None, &["status", &run]);
    let timeline = String::from_utf8_lossy(&status.stdout);
    assert!(
        timeline.contains("CompileST") && timeline.contains("ExecuteST") && timeline.contains("kernel"),
        "{timeline}"
    );

    // Errors carry their kind: approving again is illegal (4), an unknown run not found (3),
    // a bad document invalid input (65).
    let twice = machinactl(a, None, &["approve", &run]);
    assert_eq!(twice.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("IllegalState"));
    assert_eq!(machinactl(a, None, &["status", "no-such-run"]).status.code(), Some(3));
    let bad = m.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"goal": "x", "recipe": "no-such-recipe"}"#).unwrap();
    let refused = machinactl(a, None, &["submit", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no-such-recipe"));

    let listed = json_of(&machinactl(a, None, &["--output", "json", "list", "--status", "succeeded"]));
    assert!(listed["runs"].as_array().unwrap().iter().any(|r| r["id"] == run.as_str()), "{listed}");

    // Verify: clean now; a tampered plan artifact is found and the exit status says so.
    let clean = machinactl(a, None, &["verify", "--full"]);
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stdout));
    std::fs::write(m.state.join("artifacts").join(&plan[..2]).join(plan), b"{}").unwrap();
    let dirty = machinactl(a, None, &["verify", "--full"]);
    assert_eq!(dirty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dirty.stdout).contains("artifact_corrupt"));
}

#[test]
fn callers_outside_root_and_the_admin_group_are_refused() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test switches to uid 65534 and needs root (CI runs as root)");
    }
    let bus = PrivateBus::start();
    let m = start(&bus, "");
    let nobody = machinactl(&bus.address, Some(65534), &["list"]);
    assert_eq!(nobody.status.code(), Some(5), "{}", String::from_utf8_lossy(&nobody.stderr));
    let msg = String::from_utf8_lossy(&nobody.stderr);
    assert!(msg.contains("AccessDenied") && msg.contains("machina-admin"), "{msg}");
    // Nothing was changed on its behalf, and root still gets through.
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM runs"), 0);
    json_of(&machinactl(&bus.address, None, &["--output", "json", "list"]));
}

#[test]
fn a_signal_wakes_an_idle_worker_long_before_its_poll() {
    let bus = PrivateBus::start();
    // A poll of ten minutes: only the TasksQueued signal can start this run in time.
    let mut m = start(&bus, "[worker]\npoll_ms = 600000\n");
    m.start_worker("w1");
    std::thread::sleep(Duration::from_millis(500)); // the worker is idle, waiting
    let run = m.enqueue_commands(&[&["/usr/bin/true"], &["/usr/bin/echo", "hi"]]);
    // Both hand-offs need a wake-up: submission to compile, and approval to the tasks.
    m.wait_for(&run, "waiting_input", Duration::from_secs(60), |v| v["status"] == "waiting_input");
    // Approved over D-Bus: the method's own signal must wake the worker.
    let approve = machinactl(&bus.address, None, &["approve", &run]);
    assert!(approve.status.success(), "{}", String::from_utf8_lossy(&approve.stderr));
    m.wait_for(&run, "succeeded", Duration::from_secs(60), |v| v["status"] == "succeeded");
    // And over HTTP.
    let second = m.enqueue_commands(&[&["/usr/bin/true"]]);
    m.wait_for(&second, "waiting_input", Duration::from_secs(60), |v| v["status"] == "waiting_input");
    let (st, v) = m.post(&format!("/runs/{second}/approve-plan"), &serde_json::json!({"approvedBy": "t"}));
    assert_eq!(st, 200, "{v}");
    m.wait_for(&second, "succeeded", Duration::from_secs(60), |v| v["status"] == "succeeded");
}

#[test]
fn a_paused_partition_holds_its_work_until_resumed() {
    let bus = PrivateBus::start();
    let mut m = start(&bus, "[worker]\npoll_ms = 100\n");
    m.start_worker("w1");
    let a = bus.address.as_str();
    assert!(machinactl(a, None, &["pause", "default"]).status.success());
    let info = json_of(&machinactl(a, None, &["--output", "json", "info"]));
    assert_eq!(info["pausedPartitions"], serde_json::json!(["default"]));
    let run = m.enqueue_commands(&[&["/usr/bin/true"]]);
    std::thread::sleep(Duration::from_millis(1500)); // fifteen polls
    assert_eq!(m.get(&format!("/runs/{run}")).1["status"], "queued");
    assert!(machinactl(a, None, &["resume", "default"]).status.success());
    m.wait_status(&run, "waiting_input");
    let bad = machinactl(a, None, &["pause", "no spaces allowed"]);
    assert_eq!(bad.status.code(), Some(65));
}
