//! Crash safety with real processes: kill -9 of the API under load, of a worker
//! mid-task, and a worker restarted under the same id.

mod common;

use common::Machina;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn acknowledged_submissions_survive_kill_9_of_the_api() {
    let mut m = Machina::new("");
    m.start_api();
    let m = Arc::new(Mutex::new(m));
    let acked = Arc::new(Mutex::new(Vec::<(String, String, serde_json::Value)>::new()));
    let url = m.lock().unwrap().url("/enqueue");
    let mut threads = Vec::new();
    for t in 0..8 {
        let (acked, url) = (acked.clone(), url.clone());
        threads.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            for i in 0.. {
                let rid = format!("t{t}-r{i}");
                let body = json!({"goal": rid, "recipe": "demo", "inputs": {"words": ["a"]}});
                let sent = http.post(&url).bearer_auth(common::TOKEN).header("x-request-id", &rid).json(&body).send();
                match sent {
                    Ok(r) if r.status() == 202 => {
                        let v: serde_json::Value = r.json().unwrap();
                        acked.lock().unwrap().push((rid, v["run"]["id"].as_str().unwrap().to_string(), body));
                    }
                    _ => return, // the server died under us
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 200 {
        std::thread::sleep(Duration::from_millis(5));
    }
    m.lock().unwrap().kill9_api();
    for t in threads {
        t.join().unwrap();
    }
    let mut m = Arc::try_unwrap(m).ok().unwrap().into_inner().unwrap();
    m.start_api();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);
    for (rid, run, body) in &acked {
        let (st, v) = m.get(&format!("/runs/{run}"));
        assert_eq!(st, 200, "acknowledged run {run} lost: {v}");
        // Replay after the crash returns the original response.
        let (st, v) = m.post_with_id("/enqueue", body, Some(rid));
        assert_eq!((st, v["run"]["id"].as_str()), (202, Some(run.as_str())), "replay of {rid}");
    }
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check != 'ok'"), 0);
    assert_eq!(
        m.sql_i64("SELECT COUNT(*) FROM runs"),
        m.sql_i64("SELECT COUNT(*) FROM dedup"),
        "one run per request id"
    );
}

#[test]
fn a_killed_workers_task_is_reclaimed_and_committed_once() {
    let (mut m, run) = kill_a_worker_mid_task(3, "a", "2");
    m.start_worker("b");
    let done = m.wait_status(&run, "succeeded");
    let key = done["tasks"][0]["taskKey"].as_str().unwrap();
    assert_eq!(done["tasks"][0]["attempt"], 2);
    let attempts = m.sql_i64(&format!("SELECT COUNT(*) FROM attempts WHERE task_key = '{key}'"));
    assert_eq!(attempts, 2);
    let lost = m.sql_i64(&format!("SELECT COUNT(*) FROM attempts WHERE task_key = '{key}' AND attempt = 1 AND owner = 'a' AND err_code = 'LEASE_LOST'"));
    assert_eq!(lost, 1, "first attempt recorded as LEASE_LOST by a");
    let won = m.sql_i64(&format!("SELECT COUNT(*) FROM attempts WHERE task_key = '{key}' AND attempt = 2 AND owner = 'b' AND outcome = 'succeeded'"));
    assert_eq!(won, 1);
    assert_eq!(m.sql_i64(&format!("SELECT seen FROM receipts WHERE effect_key = '{key}'")), 1);
    assert_eq!(m.sql_i64("SELECT leased_tasks + queued_tasks + pending_tasks FROM runs"), 0, "counters settled");
}

#[test]
fn a_restarted_worker_reclaims_its_own_leases_at_once() {
    // A lease far longer than the test: only the restart-time reclaim can free the task.
    let (mut m, run) = kill_a_worker_mid_task(600, "w1", "1");
    m.start_worker("w1");
    let done = m.wait_status(&run, "succeeded");
    assert_eq!(done["tasks"][0]["attempt"], 2);
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM attempts WHERE err_code = 'LEASE_LOST'"), 1);
}

/// API + worker `id` (lease `lease_secs`), one approved task sleeping `secs`, the worker
/// killed with SIGKILL while it holds the task's lease.
fn kill_a_worker_mid_task(lease_secs: u64, id: &str, secs: &str) -> (Machina, String) {
    let conf = format!(
        "[worker]\nlease_secs = {lease_secs}\npoll_ms = 50\n[retry]\nbackoff_base_ms = 10\nbackoff_cap_ms = 20\n"
    );
    let mut m = Machina::new(&conf);
    m.start_api();
    m.start_worker(id);
    let run = m.enqueue_commands(&[&["/usr/bin/sleep", secs]]);
    m.wait_status(&run, "waiting_input");
    m.post(&format!("/runs/{run}/approve-plan"), &json!({"approvedBy": "t"}));
    m.wait_for(&run, "the lease", Duration::from_secs(30), |v| v["tasks"][0]["leaseOwner"] == id);
    m.kill9_worker(id);
    (m, run)
}
