//! A locked ledger and a full disk give clear errors (503 unavailable), lose
//! nothing that was acknowledged, and leave the database intact.

mod common;

use common::Machina;
use serde_json::json;

#[test]
fn a_ledger_locked_by_another_process_gives_503_then_recovers() {
    let mut m = Machina::new("");
    m.start_api();
    let (st, _) = m.post("/intents", &json!({"goal": "before"}));
    assert_eq!(st, 201);
    let locker = rusqlite::Connection::open(common::ledger_path(&m.state)).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let (st, v) = m.post("/intents", &json!({"goal": "while locked"}));
    assert_eq!((st, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("locked"), "{v}");
    locker.execute_batch("ROLLBACK").unwrap();
    let (st, _) = m.post("/intents", &json!({"goal": "after"}));
    assert_eq!(st, 201);
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM intents"), 2, "the refused intent was not stored");
}

#[test]
fn a_full_disk_gives_503_and_no_corruption() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED a_full_disk_gives_503_and_no_corruption: needs root to mount a small tmpfs");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "machina-test", mnt.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let mut m = Machina::with_state(Some(mnt.path().join("state")), "");
    m.start_api();
    let big = "x".repeat(200_000);
    let mut acked = Vec::new();
    let mut refusal = None;
    for i in 0..100 {
        let (st, v) = m.post("/intents", &json!({"goal": format!("g{i}"), "inputs": {"blob": big}}));
        match st {
            201 => acked.push(v["id"].as_str().unwrap().to_string()),
            _ => {
                refusal = Some((st, v));
                break;
            }
        }
    }
    let (st, v) = refusal.expect("the 3 MiB disk filled up");
    assert_eq!((st, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("full"), "{v}");
    assert!(!acked.is_empty());
    // Give the filesystem room again: the same process recovers without a restart.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m", mnt.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(grown.success());
    let (st, v) = m.post("/intents", &json!({"goal": "after"}));
    assert_eq!(st, 201, "{v}");
    // Nothing acknowledged was lost, nothing refused was stored, and the file is intact after a crash.
    m.kill9_api();
    m.start_api();
    for id in &acked {
        let (st, v) = m.post(&format!("/intents/{id}/run"), &json!({"recipe": "nope"}));
        assert_eq!(st, 400, "intent {id} must still exist (unknown recipe, not unknown intent): {v}");
    }
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check != 'ok'"), 0);
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM intents"), acked.len() as i64 + 1);
}
