//! The copy backend on a real temp directory (ext4 or tmpfs): round trip, concurrency,
//! retention with real files, leftovers, refusals.

mod common;

use common::scenarios::{self, config};
use common::{open_ledger, submit_runs, summary, utc};
use jiff::SignedDuration;
use machina_snapshot::{Backend, BackendChoice, CreateOutcome, Kind, SnapshotError, Snapshots, fs_type_name};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A temp dir with `state/` made and `snaps` beside it; the backend choice that gives copy here.
fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, BackendChoice) {
    let dir = tempfile::tempdir().unwrap();
    let (state, snaps) = (dir.path().join("state"), dir.path().join("snaps"));
    std::fs::create_dir(&state).unwrap();
    // On a btrfs temp dir auto would refuse a plain directory: ask for copy there.
    let choice = if fs_type_name(dir.path()).unwrap() == "btrfs" { BackendChoice::Copy } else { BackendChoice::Auto };
    (dir, state, snaps, choice)
}

#[test]
fn snapshot_change_restore_round_trip() {
    let (_dir, state, snaps, choice) = setup();
    scenarios::round_trip(&state, &snaps, choice, Backend::Copy);
}

#[test]
fn concurrent_runs_create_exactly_one() {
    let (_dir, state, snaps, choice) = setup();
    scenarios::concurrent_runs(&state, &snaps, choice);
}

#[test]
fn pin_delete_and_refusals() {
    let (_dir, state, snaps, choice) = setup();
    scenarios::pin_and_delete(&state, &snaps, choice);
}

#[test]
fn artifacts_are_hard_linked_not_copied() {
    let (_dir, state, snaps, choice) = setup();
    let ledger = open_ledger(&state);
    let names = common::put_artifacts(&ledger, 3, 10_000, "linked");
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    let CreateOutcome::Created(m) = s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap() else {
        panic!()
    };
    for n in &names {
        let live = std::fs::metadata(ledger.artifacts().path_of(n)).unwrap();
        let snap = std::fs::metadata(m.path.join("artifacts").join(&n[..2]).join(n)).unwrap();
        assert_eq!((live.dev(), live.ino()), (snap.dev(), snap.ino()), "one inode, two names");
    }
    let mode = std::fs::metadata(&snaps).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o700, "snapshots hold the whole ledger: only the owner may read them");
}

#[test]
fn scheduled_runs_keep_five_and_catch_up_once() {
    let (_dir, state, snaps, choice) = setup();
    let ledger = open_ledger(&state);
    submit_runs(&ledger, 2, "daily");
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    let day1 = utc("2026-05-01T01:30:00Z");
    let day = |n: i64| day1 + SignedDuration::from_hours(24 * n);
    for n in 0..7 {
        let run = s.run_scheduled(day(n)).unwrap();
        assert!(matches!(run.outcome, CreateOutcome::Created(_)), "day {n}: {run:?}");
        let again = s.run_scheduled(day(n) + SignedDuration::from_hours(20)).unwrap();
        assert!(matches!(again.outcome, CreateOutcome::AlreadyDone(_)), "day {n} again: {again:?}");
    }
    assert_eq!(s.list().unwrap().len(), 5, "keep the newest 5");
    let manual = s.create(Kind::Manual, Some("by hand"), day(6)).unwrap();
    assert!(matches!(manual, CreateOutcome::Created(_)));
    let oldest = s.list().unwrap()[0].id.clone();
    s.pin(&oldest, true).unwrap();

    // Off for a week: the next run makes one snapshot (not seven) and prunes the oldest unpinned
    // scheduled one; the pinned one is neither counted nor pruned, the manual one untouched.
    let run = s.run_scheduled(day(14)).unwrap();
    assert!(matches!(run.outcome, CreateOutcome::Created(_)));
    assert!(matches!(
        s.run_scheduled(day(14) + SignedDuration::from_hours(1)).unwrap().outcome,
        CreateOutcome::AlreadyDone(_)
    ));
    assert_eq!(run.pruned.len(), 0, "4 unpinned + the new one = 5");
    let run = s.run_scheduled(day(15)).unwrap();
    assert_eq!(run.pruned.len(), 1, "a 6th unpinned one: the oldest unpinned goes");
    assert_ne!(run.pruned[0].id, oldest);
    assert!(!run.pruned[0].path.exists(), "its files are gone too");
    let all = s.list().unwrap();
    let count = |k: Kind| all.iter().filter(|m| m.kind == k).count();
    assert_eq!((count(Kind::Scheduled), count(Kind::Manual)), (6, 1), "5 unpinned + 1 pinned; manual untouched");
    assert!(all.iter().any(|m| m.id == oldest && m.pinned));
    drop(ledger);
}

#[test]
fn leftovers_of_interrupted_runs_are_removed_and_foreign_files_kept() {
    let (_dir, state, snaps, choice) = setup();
    let ledger = open_ledger(&state);
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    std::fs::create_dir_all(snaps.join(".partial-20260101T000000Z-manual/artifacts")).unwrap();
    std::fs::create_dir_all(snaps.join("20250101T000000Z-scheduled/artifacts")).unwrap(); // no metadata
    std::fs::write(snaps.join("README"), "not ours").unwrap();
    assert!(matches!(s.create(Kind::Manual, None, utc("2026-01-02T00:00:00Z")).unwrap(), CreateOutcome::Created(_)));
    assert!(!snaps.join(".partial-20260101T000000Z-manual").exists());
    assert!(!snaps.join("20250101T000000Z-scheduled").exists());
    assert!(snaps.join("README").exists());
    assert_eq!(s.list().unwrap().len(), 1);
    drop(ledger);
}

#[test]
fn a_snapshot_whose_ledger_is_damaged_is_not_restored() {
    let (_dir, state, snaps, choice) = setup();
    let ledger = open_ledger(&state);
    submit_runs(&ledger, 20, "damaged");
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    let CreateOutcome::Created(m) = s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap() else {
        panic!()
    };
    drop(ledger);
    let before = summary(&state, false);
    let mut f = std::fs::OpenOptions::new().write(true).open(m.path.join("ledger.db")).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.write_all(&[0xA5; 8192]).unwrap();
    drop(f);
    let e = s.restore(&m.id, utc("2026-01-01T01:00:00Z")).unwrap_err();
    assert_eq!(e.kind().as_str(), "integrity", "{e}");
    assert_eq!(summary(&state, false), before, "the state is untouched");
    assert_eq!(s.list().unwrap().len(), 1, "no pre-restore snapshot for a restore that never happened");
    scenarios::assert_no_leftovers(&state);
}

#[test]
fn restore_keeps_the_services_owner_and_modes() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPING ownership test: not root (cannot chown)");
        return;
    }
    let (_dir, state, snaps, choice) = setup();
    let ledger = open_ledger(&state);
    common::put_artifacts(&ledger, 2, 100, "owner");
    drop(ledger);
    let nobody = 65534;
    for e in walk(&state) {
        std::os::unix::fs::lchown(&e, Some(nobody), Some(nobody)).unwrap();
    }
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    let CreateOutcome::Created(m) = s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap() else {
        panic!()
    };
    s.restore(&m.id, utc("2026-01-01T01:00:00Z")).unwrap();
    for e in walk(&state) {
        let md = std::fs::symlink_metadata(&e).unwrap();
        assert_eq!((md.uid(), md.gid()), (nobody, nobody), "{} is still the services' own", e.display());
    }
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o7777, 0o750);
}

fn walk(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let children: Vec<PathBuf> = std::fs::read_dir(&out[i]).unwrap().map(|e| e.unwrap().path()).collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

#[test]
fn configuration_errors_say_what_to_change() {
    let (dir, state, snaps, choice) = setup();
    let inside = config(&state, &state.join("snaps"), choice);
    let e = Snapshots::open(inside).unwrap_err();
    assert!(matches!(e, SnapshotError::InvalidConfig(_)) && e.to_string().contains("beside"), "{e}");
    assert!(!state.join("snaps").exists(), "nothing is created inside the state directory");

    let mut keep0 = config(&state, &snaps, choice);
    keep0.policy.keep_scheduled = 0;
    assert!(matches!(Snapshots::open(keep0), Err(SnapshotError::InvalidConfig(_))));

    let missing = config(&dir.path().join("nope"), &snaps, choice);
    assert_eq!(Snapshots::open(missing).unwrap_err().kind().as_str(), "invalid_input");

    // Snapshots on another filesystem: hard links cannot work, so say so instead of copying.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() && std::fs::metadata(&shm).unwrap().dev() != std::fs::metadata(&state).unwrap().dev() {
        let other = tempfile::tempdir_in(&shm).unwrap();
        let e = Snapshots::open(config(&state, other.path(), choice)).unwrap_err();
        assert!(matches!(e, SnapshotError::CrossDevice { .. }), "{e}");
        assert!(e.to_string().contains("same filesystem"), "{e}");
    } else {
        eprintln!("no second filesystem at /dev/shm: cross-device check not exercised here");
    }
}

#[test]
fn without_a_ledger_nothing_is_snapshotted_but_a_lost_state_can_be_restored() {
    let (_dir, state, snaps, choice) = setup();
    let s = Snapshots::open(config(&state, &snaps, choice)).unwrap();
    let e = s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap_err();
    assert!(matches!(e, SnapshotError::NoLedger(_)) && e.kind().as_str() == "not_found", "{e}");
    assert!(s.list().unwrap().is_empty());

    let ledger = open_ledger(&state);
    submit_runs(&ledger, 4, "lost");
    common::put_artifacts(&ledger, 3, 500, "lost");
    drop(ledger);
    let CreateOutcome::Created(m) = s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap() else {
        panic!()
    };
    let expected = summary(&state, false);
    // The state is lost (emptied); its directory is still there.
    for e in std::fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { std::fs::remove_dir_all(p).unwrap() } else { std::fs::remove_file(p).unwrap() }
    }
    let report = s.restore(&m.id, utc("2026-01-01T01:00:00Z")).unwrap();
    assert_eq!(report.pre_restore, None, "nothing to keep");
    assert_eq!(summary(&state, false), expected);
}
