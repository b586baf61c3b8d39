//! machina-snapshot, the real binary, against a real state directory (copy backend on the
//! test's filesystem; the btrfs backend is tested in crates/snapshot on a loop device).

mod common;

use common::Machina;
use serde_json::{Value, json};
use std::process::Command;

fn snapshot(m: &Machina, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_machina-snapshot"))
        .arg("--config-dir")
        .arg(m.dir.path().join("config.d"))
        .arg("--state-dir")
        .arg(&m.state)
        .arg("--json")
        .args(args)
        .env("MACHINA_LOG_TARGET", "stderr")
        .env("MACHINA_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), stderr)
}

fn approved_run(m: &Machina, word: &str) -> String {
    let run = m.enqueue_commands(&[&["/usr/bin/echo", word]]);
    m.wait_status(&run, "waiting_input");
    m.post(&format!("/runs/{run}/approve-plan"), &json!({"approvedBy": "t"}));
    m.wait_status(&run, "succeeded");
    run
}

#[test]
fn snapshot_then_restore_brings_back_exactly_the_snapshotted_state() {
    let mut m = Machina::new("[snapshot]\nbackend = \"copy\"\n[worker]\npoll_ms = 50\n");
    m.start_api();
    m.start_worker("w1");
    let kept = approved_run(&m, "kept");

    let (code, created, err) = snapshot(&m, &["create", "--label", "before the second run"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(created["outcome"], "created", "{created}");
    let id = created["snapshot"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["snapshot"]["backend"], "copy");

    // The daily job: one scheduled snapshot per local day, the second run has nothing to do.
    let (_, first, _) = snapshot(&m, &["run"]);
    assert_eq!(first["outcome"]["outcome"], "created", "{first}");
    let (_, second, _) = snapshot(&m, &["run"]);
    assert_eq!(second["outcome"]["outcome"], "already-done", "{second}");

    let lost = approved_run(&m, "lost");
    m.kill9_api();
    m.kill9_worker("w1");
    let (code, restored, err) = snapshot(&m, &["restore", &id]);
    assert_eq!(code, Some(0), "{err}");
    let pre = restored["pre_restore"]["id"].as_str().expect("the replaced state is kept as a snapshot").to_string();

    m.start_api();
    assert_eq!(m.get(&format!("/runs/{kept}")).0, 200);
    assert_eq!(m.get(&format!("/runs/{lost}")).0, 404, "the run after the snapshot is gone");
    let (_, list, _) = snapshot(&m, &["list"]);
    let ids: Vec<&str> = list.as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(ids.contains(&id.as_str()) && ids.contains(&pre.as_str()), "{list}");

    // Pinned snapshots cannot be deleted; unpinned they can.
    assert_eq!(snapshot(&m, &["pin", &pre]).0, Some(0));
    let (code, _, err) = snapshot(&m, &["delete", &pre]);
    assert_ne!(code, Some(0));
    assert!(err.contains("pinned"), "{err}");
    assert_eq!(snapshot(&m, &["unpin", &pre]).0, Some(0));
    assert_eq!(snapshot(&m, &["delete", &pre]).0, Some(0));
    let (code, _, err) = snapshot(&m, &["restore", "no-such-snapshot"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no-such-snapshot"), "{err}");
}
