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

/// The D-Bus snapshot methods, through the request channel: a thread stands in for
/// machina-snapshot-requests.path and runs `machina-snapshot serve-requests` when a request appears.
#[test]
fn snapshot_methods_over_dbus_go_through_the_request_channel() {
    let bus = common::dbus::PrivateBus::start();
    let (requests, results) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let m = Machina::new(&format!(
        "[bus]\naddress = \"{}\"\n[snapshot]\nbackend = \"copy\"\nrequest_dir = \"{}\"\nresult_dir = \"{}\"\n",
        bus.address,
        requests.path().display(),
        results.path().display()
    ));
    let mut m = m;
    m.start_api();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let (stop, dir, out, conf, state) = (
            stop.clone(),
            requests.path().to_path_buf(),
            results.path().to_path_buf(),
            m.dir.path().join("config.d"),
            m.state.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let queued = std::fs::read_dir(&dir)
                    .unwrap()
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".request"));
                if queued {
                    let st = Command::new(env!("CARGO_BIN_EXE_machina-snapshot"))
                        .arg("--config-dir")
                        .arg(&conf)
                        .arg("--state-dir")
                        .arg(&state)
                        .args(["serve-requests", "--requests"])
                        .arg(&dir)
                        .arg("--results")
                        .arg(&out)
                        .env("MACHINA_LOG_TARGET", "stderr")
                        .env("MACHINA_LOG", "warn")
                        .status()
                        .unwrap();
                    assert!(st.success());
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let call = |args: &[&str]| {
        let out = Command::new("busctl")
            .arg(format!("--address={}", bus.address))
            .args(["--json=short", "call", "org.machina.Manager1", "/org/machina/Manager1", "org.machina.Manager1"])
            .args(args)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let doc = v["data"][0].as_str().map(|s| serde_json::from_str::<Value>(s).unwrap()).unwrap_or(Value::Null);
        (out.status.success(), doc, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, created, err) = call(&["CreateSnapshot", "s", "from dbus"]);
    assert!(ok, "{err}");
    assert_eq!(created["outcome"], "created", "{created}");
    let id = created["snapshot"]["id"].as_str().unwrap().to_string();
    let (ok, listed, _) = call(&["ListSnapshots"]);
    assert!(ok);
    assert_eq!(listed[0]["label"], "from dbus", "{listed}");
    let pinned = call(&["PinSnapshot", "sb", &id, "true"]);
    assert!(pinned.0, "{pinned:?}");
    let (ok, _, err) = call(&["DeleteSnapshot", "s", &id]);
    assert!(!ok && err.contains("pinned"), "a pinned snapshot must not be deleted: {err}");
    assert!(call(&["PinSnapshot", "sb", &id, "false"]).0);
    assert!(call(&["DeleteSnapshot", "s", &id]).0);
    let (ok, _, err) = call(&["DeleteSnapshot", "s", "no-such-snapshot"]);
    assert!(!ok && err.contains("no-such-snapshot"), "{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    server.join().unwrap();
}
