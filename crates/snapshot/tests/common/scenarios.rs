//! Scenarios run against both backends on real filesystems.

use super::{open_ledger, put_artifacts, submit_runs, summary, utc};
use jiff::SignedDuration;
use jiff::tz::TimeZone;
use machina_snapshot::{
    Backend, BackendChoice, CreateOutcome, Exchange, Kind, SnapshotConfig, SnapshotError, SnapshotMeta, Snapshots,
};
use std::path::Path;
use std::sync::{Arc, Barrier};

/// A configuration with the default policy in a fixed POSIX zone (UTC+1 in winter).
pub fn config(state: &Path, snaps: &Path, backend: BackendChoice) -> SnapshotConfig {
    let mut cfg = SnapshotConfig::new(state);
    cfg.snapshot_dir = snaps.to_path_buf();
    cfg.backend = backend;
    cfg.time_zone = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
    cfg
}

fn created(o: CreateOutcome) -> SnapshotMeta {
    match o {
        CreateOutcome::Created(m) => m,
        other => panic!("expected a new snapshot, got {other:?}"),
    }
}

/// Snapshot a live ledger, change the state, restore, and check the state is the snapshot's;
/// then undo the restore with the pre-restore snapshot.
pub fn round_trip(state: &Path, snaps: &Path, choice: BackendChoice, expect: Backend) {
    let ledger = open_ledger(state);
    submit_runs(&ledger, 5, "before");
    put_artifacts(&ledger, 8, 4096, "before");
    let s = Snapshots::open(config(state, snaps, choice)).expect("open snapshots");
    assert_eq!(s.backend(), expect);

    // Taken while the ledger is open: its writer and checkpointer threads are running.
    let t0 = utc("2026-11-23T03:00:00Z");
    let snap = created(s.create(Kind::Manual, Some("before the change"), t0).unwrap());
    let expected = summary(state, false);
    assert_eq!(expected.runs.len(), 5);
    assert_eq!(summary(&snap.path, true), expected, "the snapshot holds the state");
    assert_eq!((snap.kind, snap.label.as_deref()), (Kind::Manual, Some("before the change")));
    assert_eq!(snap.artifacts, 8);
    assert_eq!(snap.local_day.to_string(), "2026-11-23");
    assert_eq!(snap.schema_version, machina_ledger::SCHEMA_VERSION);

    submit_runs(&ledger, 3, "after");
    put_artifacts(&ledger, 4, 1000, "after");
    drop(ledger); // the caller stops the services before restoring
    let changed = summary(state, false);
    assert_ne!(changed, expected);

    let report = s.restore(&snap.id, t0 + SignedDuration::from_hours(1)).expect("restore");
    assert_eq!(report.restored.id, snap.id);
    assert_eq!(report.exchange, Exchange::Atomic);
    let pre = report.pre_restore.expect("the replaced state is kept");
    assert_eq!(pre.kind, Kind::PreRestore);
    let label = pre.label.clone().unwrap();
    assert!(label.contains(&snap.id) && label.contains("2026-11-23 05:00:00 CET"), "{label}");
    assert_eq!(summary(state, false), expected, "the state is the snapshot's again");
    assert_eq!(summary(&pre.path, true), changed, "the pre-restore snapshot holds what was replaced");

    // machina opens the restored ledger (migrations, writer) and carries on.
    let ledger = open_ledger(state);
    submit_runs(&ledger, 1, "after restore");
    drop(ledger);

    // Undo the restore.
    let undo = s.restore(&pre.id, t0 + SignedDuration::from_hours(2)).expect("undo restore");
    assert_eq!(summary(state, false), changed);
    let kinds: Vec<Kind> = s.list().unwrap().iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [Kind::Manual, Kind::PreRestore, Kind::PreRestore]);
    assert_eq!(undo.pre_restore.unwrap().artifacts, 8);
    assert_no_leftovers(state);
}

/// Nothing but the state directory and what the test made is left beside it.
pub fn assert_no_leftovers(state: &Path) {
    let name = state.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(state.parent().unwrap()).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(&format!(".{name}.")), "leftover beside the state: {n}");
    }
}

/// Several runs at once: exactly one creates; a held lock makes every mutation say so.
pub fn concurrent_runs(state: &Path, snaps: &Path, choice: BackendChoice) {
    let ledger = open_ledger(state);
    submit_runs(&ledger, 3, "concurrent");
    let cfg = config(state, snaps, choice);
    let now = utc("2026-07-01T10:00:00Z");
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, barrier) = (cfg.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = Snapshots::open(cfg).unwrap();
                barrier.wait();
                s.run_scheduled(now).unwrap().outcome
            })
        })
        .collect();
    let outcomes: Vec<CreateOutcome> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let made = outcomes.iter().filter(|o| matches!(o, CreateOutcome::Created(_))).count();
    assert_eq!(made, 1, "exactly one run creates: {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, CreateOutcome::Created(_) | CreateOutcome::AlreadyDone(_) | CreateOutcome::Locked))
    );
    let s = Snapshots::open(cfg).unwrap();
    assert_eq!(s.list().unwrap().len(), 1);

    // Another process holding the lock (an flock on its own open of the file).
    let held = std::fs::File::options().write(true).create(true).truncate(false).open(snaps.join(".lock")).unwrap();
    held.try_lock().unwrap();
    assert_eq!(s.create(Kind::Manual, None, now).unwrap(), CreateOutcome::Locked);
    assert!(s.run_scheduled(now).unwrap().outcome == CreateOutcome::Locked);
    let id = s.list().unwrap()[0].id.clone();
    for e in [
        s.prune(now).unwrap_err(),
        s.pin(&id, true).unwrap_err(),
        s.delete(&id).unwrap_err(),
        s.restore(&id, now).unwrap_err(),
    ] {
        assert!(matches!(e, SnapshotError::Locked(_)), "{e}");
        assert_eq!(e.kind().as_str(), "unavailable");
    }
    drop(held);
    assert!(matches!(s.create(Kind::Manual, None, now).unwrap(), CreateOutcome::Created(_)));
    drop(ledger);
}

/// Delete, pin and their refusals.
pub fn pin_and_delete(state: &Path, snaps: &Path, choice: BackendChoice) {
    let ledger = open_ledger(state);
    submit_runs(&ledger, 1, "pin");
    let s = Snapshots::open(config(state, snaps, choice)).unwrap();
    let m = created(s.create(Kind::Manual, Some("keep me"), utc("2026-03-01T12:00:00Z")).unwrap());
    assert!(s.pin(&m.id, true).unwrap().pinned);
    assert!(s.get(&m.id).unwrap().pinned, "pinning is stored");
    let e = s.delete(&m.id).unwrap_err();
    assert!(matches!(e, SnapshotError::Pinned(_)) && e.kind().as_str() == "illegal_state", "{e}");
    assert!(!s.pin(&m.id, false).unwrap().pinned);
    s.delete(&m.id).unwrap();
    assert!(!m.path.exists() && !snaps.join(format!("{}.json", m.id)).exists());
    assert!(matches!(s.get(&m.id), Err(SnapshotError::NotFound(_))));
    assert!(matches!(s.delete("../state"), Err(SnapshotError::NotFound(_))));
    assert!(matches!(
        s.create(Kind::PreRestore, None, utc("2026-03-01T12:00:00Z")),
        Err(SnapshotError::InvalidInput(_))
    ));
    drop(ledger);
}
