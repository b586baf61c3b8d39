//! Both backends on a real btrfs: a loop-mounted image (root and btrfs-progs needed; without
//! them each test prints why and returns).

mod common;

use common::scenarios::{self, config};
use common::{LoopBtrfs, open_ledger, submit_runs, utc};
use machina_snapshot::{Backend, BackendChoice, CreateOutcome, Kind, SnapshotError, Snapshots};

const IMAGE_SIZE: &str = "512M";

#[test]
fn round_trip_on_a_subvolume() {
    let Some(fs) = LoopBtrfs::setup(IMAGE_SIZE) else { return };
    let (state, snaps) = (fs.mnt().join("machina"), fs.mnt().join("machina-snapshots"));
    fs.subvolume(&state);
    scenarios::round_trip(&state, &snaps, BackendChoice::Auto, Backend::Btrfs);
    assert!(libbtrfsutil::is_subvolume(&state).unwrap(), "the restored state is a subvolume");
    for m in Snapshots::open(config(&state, &snaps, BackendChoice::Auto)).unwrap().list().unwrap() {
        assert!(libbtrfsutil::subvolume_read_only(&m.path).unwrap(), "{} is read-only", m.id);
        assert!(std::fs::write(m.path.join("x"), b"x").is_err(), "a snapshot cannot be written");
    }
}

#[test]
fn concurrent_runs_and_delete_on_a_subvolume() {
    let Some(fs) = LoopBtrfs::setup(IMAGE_SIZE) else { return };
    let (state, snaps) = (fs.mnt().join("machina"), fs.mnt().join("machina-snapshots"));
    fs.subvolume(&state);
    scenarios::concurrent_runs(&state, &snaps, BackendChoice::Auto);
    scenarios::pin_and_delete(&state, &snaps, BackendChoice::Btrfs);
    // Snapshots are beside the state subvolume, not in it.
    assert!(std::fs::read_dir(&state).unwrap().all(|e| e.unwrap().file_name() != "machina-snapshots"));
}

#[test]
fn a_plain_directory_on_btrfs_is_reported_not_silently_copied() {
    let Some(fs) = LoopBtrfs::setup(IMAGE_SIZE) else { return };
    let (state, snaps) = (fs.mnt().join("plain"), fs.mnt().join("plain-snapshots"));
    std::fs::create_dir(&state).unwrap();
    let ledger = open_ledger(&state);
    submit_runs(&ledger, 2, "plain");
    let e = Snapshots::open(config(&state, &snaps, BackendChoice::Auto)).unwrap_err();
    assert!(matches!(e, SnapshotError::NotSubvolume { .. }), "{e}");
    assert!(e.to_string().contains("copy backend"), "the message says what to do: {e}");
    let e = Snapshots::open(config(&state, &snaps, BackendChoice::Btrfs)).unwrap_err();
    assert!(matches!(e, SnapshotError::NotBtrfs { .. }), "{e}");

    // Asked for explicitly, the copy backend works there.
    let s = Snapshots::open(config(&state, &snaps, BackendChoice::Copy)).unwrap();
    assert_eq!(s.backend(), Backend::Copy);
    assert!(matches!(s.create(Kind::Manual, None, utc("2026-01-01T00:00:00Z")).unwrap(), CreateOutcome::Created(_)));

    // …but not with the snapshots in another subvolume: hard links cannot cross it.
    let other = fs.mnt().join("other");
    fs.subvolume(&other);
    let e = Snapshots::open(config(&state, &other.join("snaps"), BackendChoice::Copy)).unwrap_err();
    assert!(matches!(e, SnapshotError::CrossDevice { .. }), "{e}");
    drop(ledger);
}

#[test]
fn a_subvolume_with_snapshots_off_btrfs_is_refused() {
    let Some(fs) = LoopBtrfs::setup(IMAGE_SIZE) else { return };
    let state = fs.mnt().join("machina");
    fs.subvolume(&state);
    let elsewhere = tempfile::tempdir_in("/var/tmp").unwrap();
    if machina_snapshot::fs_type_name(elsewhere.path()).unwrap() == "btrfs" {
        eprintln!("/var/tmp is on btrfs here: no non-btrfs directory to test with");
        return;
    }
    let e = Snapshots::open(config(&state, elsewhere.path(), BackendChoice::Auto)).unwrap_err();
    assert!(matches!(e, SnapshotError::CrossDevice { backend: "btrfs", .. }), "{e}");
}

#[test]
fn the_copy_backend_round_trip_also_works_on_btrfs() {
    let Some(fs) = LoopBtrfs::setup(IMAGE_SIZE) else { return };
    let (state, snaps) = (fs.mnt().join("plain"), fs.mnt().join("plain-snapshots"));
    std::fs::create_dir(&state).unwrap();
    scenarios::round_trip(&state, &snaps, BackendChoice::Copy, Backend::Copy);
}
