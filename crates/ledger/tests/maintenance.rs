//! Maintenance: pruning finished runs and unreferenced artifacts, expiry, and verification.

mod common;

use common::*;
use machina_core::RunStatus;
use machina_ledger::{DedupKey, Submission};

const DAY_MS: i64 = 86_400_000;

/// A run with two tasks, both completed with stdout artifacts; returns the run id and the stdout sha.
async fn finished_run(t: &TestLedger, output: &str) -> (String, String) {
    let (_, run) = executing_run(&t.ledger, "p", shell_plan(2, 2)).await;
    let out = t.ledger.put_artifact(output.as_bytes().to_vec(), "text/plain").await.unwrap();
    for _ in 0..2 {
        let c = claim(&t.ledger, "w").await;
        let mut r = ok_report(&c, "w");
        r.stdout_sha256 = Some(out.clone());
        t.ledger.complete_task(r).await.unwrap();
    }
    assert_eq!(t.ledger.run_status(&run).await.unwrap(), RunStatus::Succeeded);
    (run, out)
}

#[tokio::test]
async fn prune_takes_only_finished_runs_past_retention_and_their_artifacts() {
    let t = TestLedger::new();
    let (old, old_out) = finished_run(&t, "old output").await;
    let (_, running) = executing_run(&t.ledger, "p", shell_plan(1, 1)).await;
    let held = claim(&t.ledger, "slow").await; // leased for the rest of the test (concurrency 1)
    assert_eq!(held.run_id, running);
    let stray = t.ledger.put_artifact(b"nobody refers to me".to_vec(), "text/plain").await.unwrap();
    t.clock.advance_ms(31 * DAY_MS);
    let (young, young_out) = finished_run(&t, "young output").await;
    let fresh_stray = t.ledger.put_artifact(b"just stored, not yet referenced".to_vec(), "text/plain").await.unwrap();

    let report = t.ledger.prune(30 * DAY_MS, 3_600_000).await.unwrap();
    assert_eq!((report.runs, report.intents), (1, 1), "{report:?}");
    assert!(t.ledger.run_detail(&old).await.is_err(), "the old finished run is gone");
    assert_eq!(t.ledger.run_status(&running).await.unwrap(), RunStatus::Executing, "never a run that is not finished");
    assert_eq!(t.ledger.run_status(&young).await.unwrap(), RunStatus::Succeeded);
    for table in ["tasks", "attempts", "receipts", "events", "run_steps"] {
        let n = count(&t.ledger, &format!("SELECT COUNT(*) FROM {table} WHERE {}", owner_filter(table, &old))).await;
        assert_eq!(n, 0, "{table} rows of the pruned run remain");
    }
    // The old run's output and the old stray are gone, file and row; what is referenced or
    // was stored within the grace period stays.
    let path = |sha: &str| t.dir.path().join("artifacts").join(&sha[..2]).join(sha);
    for gone in [&old_out, &stray] {
        assert!(!path(gone).exists(), "{gone} file remains");
        assert!(t.ledger.get_artifact(gone).await.is_err());
    }
    for kept in [&young_out, &fresh_stray] {
        assert!(t.ledger.get_artifact(kept).await.is_ok(), "{kept} must stay");
    }
    assert_eq!(report.artifacts, 2, "{report:?}");
    assert!(t.ledger.verify(1000, 0).await.unwrap().is_ok());
    assert_eq!(t.ledger.counter_drift().await.unwrap(), 0);
}

fn owner_filter(table: &str, run: &str) -> String {
    match table {
        "attempts" | "receipts" => {
            format!(
                "task_id NOT IN (SELECT id FROM tasks) OR task_id IN (SELECT id FROM task_list WHERE run_id = '{run}')"
            )
        }
        // Tasks name their run by number, which goes with the run's row: a task left behind
        // has no run (its foreign key would also have refused the run's delete).
        "tasks" => {
            format!("run_num NOT IN (SELECT num FROM runs) OR id IN (SELECT id FROM task_list WHERE run_id = '{run}')")
        }
        _ => format!("run_id = '{run}'"),
    }
}

#[tokio::test]
async fn the_schema_refuses_to_delete_the_history_of_an_unfinished_run() {
    let t = TestLedger::new();
    let (_, run) = executing_run(&t.ledger, "p", shell_plan(1, 1)).await;
    let c = raw(&t.ledger);
    let err = c.execute("DELETE FROM run_steps WHERE run_id = ?1", [&run]).unwrap_err().to_string();
    assert!(err.contains("append-only"), "{err}");
    let err = c.execute("DELETE FROM runs WHERE id = ?1", [&run]).unwrap_err().to_string();
    assert!(err.contains("only finished runs"), "{err}");
}

#[tokio::test]
async fn expired_dedup_entries_are_removed() {
    let t = TestLedger::new();
    let key = DedupKey { request_id: "r1".into(), request_sha256: "x".into(), ttl_ms: 1000 };
    let s = Submission::Enqueue(new_intent(serde_json::json!({})), new_run("p", "demo", 1));
    t.ledger.submit(Some(key), s).await.unwrap();
    assert_eq!(t.ledger.expire(DAY_MS).await.unwrap().0, 0, "not expired yet");
    t.clock.advance_ms(1001);
    assert_eq!(t.ledger.expire(DAY_MS).await.unwrap().0, 1);
}

#[tokio::test]
async fn verify_finds_corrupt_and_missing_artifacts_and_rotates_its_sample() {
    let t = TestLedger::new();
    let mut shas = Vec::new();
    for i in 0..5 {
        shas.push(t.ledger.put_artifact(format!("artifact {i}").into_bytes(), "text/plain").await.unwrap());
    }
    assert!(t.ledger.verify(100, 0).await.unwrap().is_ok());
    shas.sort();
    let path = |sha: &str| t.dir.path().join("artifacts").join(&sha[..2]).join(sha);
    std::fs::write(path(&shas[1]), b"tampered").unwrap();
    std::fs::remove_file(path(&shas[3])).unwrap();
    // Just stored: a missing file may still be on its way (its put registers the row first).
    let recent = t.ledger.verify(100, 3_600_000).await.unwrap();
    assert_eq!(recent.violations.iter().map(|v| v.check.as_str()).collect::<Vec<_>>(), ["artifact_corrupt"]);
    let full = t.ledger.verify(100, 0).await.unwrap();
    let checks: Vec<&str> = full.violations.iter().map(|v| v.check.as_str()).collect();
    assert_eq!(checks, ["artifact_corrupt", "artifact_missing"], "{full:?}");
    // A sample of 2 out of 5: three calls cover every artifact, each finding what is in its window.
    let mut found = Vec::new();
    let mut checked = 0;
    for _ in 0..3 {
        let r = t.ledger.verify(2, 0).await.unwrap();
        checked += r.artifacts_checked;
        found.extend(r.violations.into_iter().map(|v| v.check));
    }
    assert_eq!(checked, 5);
    found.sort();
    assert_eq!(found, ["artifact_corrupt", "artifact_missing"]);
}
