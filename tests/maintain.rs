//! machina-maintain, the real binary, on a real state directory.

mod common;

use common::Machina;
use serde_json::{Value, json};
use std::process::Command;

fn maintain(m: &Machina, extra: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_machina-maintain"))
        .arg("--config-dir")
        .arg(m.dir.path().join("config.d"))
        .arg("--state-dir")
        .arg(&m.state)
        .arg("--json")
        .args(extra)
        .env("MACHINA_LOG", "warn")
        .env("MACHINA_LOG_TARGET", "stderr")
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), report)
}

#[test]
fn maintenance_runs_clean_and_fails_on_a_violation() {
    let mut m = Machina::new("[worker]\npoll_ms = 50\n");
    m.start_api();
    m.start_worker("w1");
    let run = m.enqueue_commands(&[&["/usr/bin/echo", "kept"]]);
    m.wait_status(&run, "waiting_input");
    m.post(&format!("/runs/{run}/approve-plan"), &json!({"approvedBy": "t"}));
    let done = m.wait_status(&run, "succeeded");

    let (code, report) = maintain(&m, &["--full"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["pruned"]["runs"], 0, "a fresh run is within its retention");
    assert!(report["verify"]["artifactsChecked"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["verify"]["violations"], json!([]));

    let out = done["tasks"][0]["stdoutSha256"].as_str().unwrap();
    std::fs::write(m.state.join("artifacts").join(&out[..2]).join(out), b"tampered").unwrap();
    let (code, report) = maintain(&m, &["--verify-only", "--full"]);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["verify"]["violations"][0]["check"], "artifact_corrupt");
}
