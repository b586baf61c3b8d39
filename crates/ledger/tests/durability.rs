//! Opening and keeping data: pragmas as read back, the schema version check
//! and meta table, idempotent submission (replay, conflict, TTL, replay across
//! a reopen), and content-addressed artifacts with integrity checks.

mod common;

use common::*;
use machina_core::plan::sha256_hex;
use machina_core::{APP_VERSION, ManualClock};
use machina_ledger::{
    BUSY_TIMEOUT_MS, DedupKey, Durability, LEDGER_FILE, Ledger, LedgerError, NewRun, SCHEMA_VERSION, Submission,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pragmas_read_back_as_configured() {
    let t = TestLedger::new();
    let p = t.ledger.pragmas();
    assert_eq!(p.journal_mode.to_ascii_lowercase(), "wal");
    // SQLite syncs at checkpoints only; the ledger syncs each acknowledged commit itself.
    assert_eq!(p.synchronous, 1, "connections run synchronous=NORMAL");
    assert!(p.durable_commits, "durable commits by default");
    assert_eq!(p.foreign_keys, 1);
    assert_eq!(p.busy_timeout_ms, BUSY_TIMEOUT_MS as i64);
    assert!(p.stable_plans, "statements are not re-prepared for what is bound to them");

    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &ManualClock::new(T0));
    o.durability = Durability::Normal;
    let normal = Ledger::open(o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(normal.pragmas().synchronous, 1);
    assert!(!normal.pragmas().durable_commits, "no per-commit sync when asked for NORMAL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_records_versions_and_reopening_is_idempotent() {
    let t = TestLedger::new();
    let read_meta = |l: &Ledger| {
        let db = raw(l);
        let get =
            |k: &str| -> String { db.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0)).unwrap() };
        let user_version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        (get("schema_version"), get("app_version"), user_version)
    };
    let expected = (SCHEMA_VERSION.to_string(), APP_VERSION.to_string(), SCHEMA_VERSION);
    assert_eq!(read_meta(&t.ledger), expected);
    let (_, run) = enqueue(&t.ledger, "p", "demo", 1, json!({})).await;
    let t = t.reopen();
    assert_eq!(read_meta(&t.ledger), expected);
    assert_eq!(t.ledger.run_detail(&run).await.unwrap().run.id, run, "data survives reopening");
}

#[test]
fn a_ledger_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = rusqlite::Connection::open(dir.path().join(LEDGER_FILE)).unwrap();
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    }
    let err = match Ledger::open(options(dir.path(), &ManualClock::new(T0))) {
        Ok(_) => panic!("a newer schema was accepted"),
        Err(e) => e,
    };
    match &err {
        LedgerError::SchemaTooNew { found, supported, .. } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("upgrade"), "{msg}");
    let db = rusqlite::Connection::open(dir.path().join(LEDGER_FILE)).unwrap();
    let v: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION + 1, "the refused file is left alone");
    let tables: i64 = db.query_row("SELECT COUNT(*) FROM sqlite_master WHERE name = 'runs'", [], |r| r.get(0)).unwrap();
    assert_eq!(tables, 0, "no migration ran");
}

fn key(id: &str, body: &str, ttl_ms: i64) -> Option<DedupKey> {
    Some(DedupKey { request_id: id.into(), request_sha256: sha256_hex(body.as_bytes()), ttl_ms })
}

fn submission() -> Submission {
    Submission::Enqueue(new_intent(json!({"words": ["x"]})), new_run("p", "demo", 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_replays_its_first_response() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let first = l.submit(key("req-1", "body", 1_000), submission()).await.unwrap();
    assert!(!first.replayed);
    let again = l.submit(key("req-1", "body", 1_000), submission()).await.unwrap();
    assert!(again.replayed);
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 1);
    assert_eq!(count(l, "SELECT COUNT(*) FROM intents").await, 1);

    match l.submit(key("req-1", "another body", 1_000), submission()).await {
        Err(e @ LedgerError::Conflict(_)) => assert_eq!(e.kind().as_str(), "conflict"),
        other => panic!("reused id with another body: {other:?}"),
    }
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 1);

    // Just before the TTL it still replays; once it has passed, the id is free again.
    t.clock.advance_ms(999);
    assert!(l.submit(key("req-1", "body", 1_000), submission()).await.unwrap().replayed);
    t.clock.advance_ms(1);
    let fresh = l.submit(key("req-1", "body", 1_000), submission()).await.unwrap();
    assert!(!fresh.replayed);
    assert_ne!(body_id(&fresh.body["run"]), body_id(&first.body["run"]));
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 2);
    let replay = l.submit(key("req-1", "body", 1_000), submission()).await.unwrap();
    assert_eq!((replay.replayed, &replay.body), (true, &fresh.body));

    // Without a key nothing is deduplicated.
    l.submit(None, submission()).await.unwrap();
    l.submit(None, submission()).await.unwrap();
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_survives_closing_and_reopening() {
    let t = TestLedger::new();
    let first = t.ledger.submit(key("req-durable", "body", 60_000), submission()).await.unwrap();
    let t = t.reopen();
    let l = &t.ledger;
    let again = l.submit(key("req-durable", "body", 60_000), submission()).await.unwrap();
    assert!(again.replayed, "the dedup entry was lost on reopen");
    assert_eq!(again.body, first.body);
    assert_eq!(count(l, "SELECT COUNT(*) FROM runs").await, 1);
    assert!(matches!(
        l.submit(key("req-durable", "changed", 60_000), submission()).await,
        Err(LedgerError::Conflict(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_round_trip_and_detect_corruption() {
    let t = TestLedger::new();
    let l = &t.ledger;
    let bytes = b"stdout of some task\n".to_vec();
    let sha = l.put_artifact(bytes.clone(), "text/plain").await.unwrap();
    assert_eq!(sha, sha256_hex(&bytes));
    assert_eq!(l.put_artifact(bytes.clone(), "text/plain").await.unwrap(), sha, "idempotent");
    assert_eq!(l.get_artifact(&sha).await.unwrap(), bytes);
    assert_eq!(count(l, "SELECT COUNT(*) FROM artifacts").await, 1);

    let path = l.artifacts().path_of(&sha);
    std::fs::write(&path, b"stdout of some tasK\n").unwrap();
    match l.get_artifact(&sha).await {
        Err(e @ LedgerError::Integrity(_)) => assert_eq!(e.kind().as_str(), "integrity"),
        other => panic!("corrupted artifact: {other:?}"),
    }

    let unknown = sha256_hex(b"never stored");
    for bad in [unknown.as_str(), "../../etc/passwd", "ABC"] {
        match l.get_artifact(bad).await {
            Err(e @ LedgerError::NotFound { .. }) => assert_eq!(e.kind().as_str(), "not_found"),
            other => panic!("artifact {bad:?}: {other:?}"),
        }
    }
    // A file on disk without its row is not served either.
    let orphan = l.artifacts().put(b"orphan").unwrap();
    assert!(matches!(l.get_artifact(&orphan).await, Err(LedgerError::NotFound { .. })));
}

/// Several processes (here threads) opening a fresh state directory at once all succeed.
#[test]
fn concurrent_first_opens_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = machina_core::ManualClock::new(T0);
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (d, c) = (dir.path().to_path_buf(), clock.clone());
            std::thread::spawn(move || machina_ledger::Ledger::open(options(&d, &c)).map(drop))
        })
        .collect();
    for h in handles {
        h.join().unwrap().expect("a concurrent first open failed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_answers_what_a_read_gives_back() {
    // The submission's records are built from what it wrote, not read back: they must match.
    let t = TestLedger::new();
    let l = &t.ledger;
    let inputs = json!({"words": ["a", "b"], "n": 1.5, "nested": {"k": [true, null]}});
    let s = l.submit(None, Submission::Enqueue(new_intent(inputs), new_run("p", "demo", 3))).await.unwrap();
    let (intent_id, run_id) = (body_id(&s.body["intent"]), body_id(&s.body["run"]));
    let intent = serde_json::to_value(l.intent(&intent_id).await.unwrap()).unwrap();
    assert_eq!(s.body["intent"], intent);
    let detail = l.run_detail(&run_id).await.unwrap();
    assert_eq!(s.body["run"], serde_json::to_value(&detail.run).unwrap());
    // A run of an existing intent, and of a missing one.
    let run2 = l.submit(None, Submission::Run(NewRun { intent_id, ..new_run("p", "demo", 1) })).await.unwrap();
    let id2 = body_id(&run2.body);
    assert_eq!(run2.body, serde_json::to_value(l.run_detail(&id2).await.unwrap().run).unwrap());
    let missing = NewRun { intent_id: "no-such-intent".into(), ..new_run("p", "demo", 1) };
    assert!(matches!(l.submit(None, Submission::Run(missing)).await, Err(LedgerError::NotFound { .. })));
    // The first event of a run is number 1, and claiming it for compile continues the sequence.
    l.claim_compile("c", LONG_LEASE).await.unwrap().expect("queued run");
    let seqs: Vec<i64> = {
        let db = raw(l);
        let mut st = db.prepare("SELECT seq FROM events WHERE run_id = ?1 ORDER BY seq").unwrap();
        st.query_map([&run_id], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(seqs, vec![1, 2, 3], "run_created, state_changed, step");
}
