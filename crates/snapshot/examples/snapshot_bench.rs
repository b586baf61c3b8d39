//! Snapshot time against state size, for both backends; prints a markdown table.
//!
//! ```sh
//! cargo run --release -p machina-snapshot --example snapshot_bench
//! BENCH_SIZES=10M,100M BENCH_REPEAT=5 cargo run --release -p machina-snapshot --example snapshot_bench
//! ```
//!
//! Each state is a real ledger (opened by machina_ledger, with 200 submitted runs) padded
//! with a filler table to a quarter of the size, plus content-addressed artifacts of 64 KiB
//! for the rest. The copy backend runs in a temp dir under /var/tmp (whatever filesystem that
//! is, usually ext4); btrfs on a loop-mounted image (root and btrfs-progs needed, else skipped
//! with the reason). Times are wall clock with a warm page cache: the median of BENCH_REPEAT
//! snapshots (each deleted before the next), then one restore (build, quick_check of the
//! ledger, pre-restore snapshot, exchange).

#[path = "../tests/common/mod.rs"]
mod common;

use jiff::Timestamp;
use machina_ledger::{ArtifactStore, LEDGER_FILE};
use machina_snapshot::{Backend, BackendChoice, CreateOutcome, Kind, Snapshots, fs_type_name};
use std::path::Path;
use std::time::Instant;

/// Artifact file size: the order of a task's captured output.
const ARTIFACT_BYTES: usize = 64 * 1024;
/// Ledger filler row size.
const FILLER_ROW_BYTES: usize = 64 * 1024;
/// Share of the state in the ledger.
const LEDGER_SHARE: f64 = 0.25;

type Error = Box<dyn std::error::Error>;

struct Row {
    size: String,
    backend: Backend,
    fs: String,
    ledger_mb: f64,
    artifacts: u64,
    snapshot_ms: f64,
    restore_ms: f64,
}

fn main() -> Result<(), Error> {
    let sizes = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "10M,100M,1G".into());
    let repeat: usize = std::env::var("BENCH_REPEAT").ok().and_then(|r| r.parse().ok()).unwrap_or(3).max(1);
    let sizes: Vec<(String, u64)> = sizes.split(',').map(|s| (s.to_string(), parse_size(s))).collect();
    let mut rows = Vec::new();

    let copy_root = tempfile::Builder::new().prefix("machina-snapbench-").tempdir_in("/var/tmp")?;
    for (label, bytes) in &sizes {
        let dir = copy_root.path().join(label);
        std::fs::create_dir(&dir)?;
        let state = dir.join("state");
        std::fs::create_dir(&state)?;
        let choice = if fs_type_name(&dir)? == "btrfs" { BackendChoice::Copy } else { BackendChoice::Auto };
        rows.push(measure(label, *bytes, &state, &dir.join("snapshots"), choice, repeat)?);
        std::fs::remove_dir_all(&dir)?;
    }

    let largest = sizes.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let image = format!("{}M", (largest * 3 / (1 << 20)).max(1024));
    match common::LoopBtrfs::setup(&image) {
        None => eprintln!("btrfs rows skipped (see above)"),
        Some(fs) => {
            for (label, bytes) in &sizes {
                let state = fs.mnt().join(format!("state-{label}"));
                fs.subvolume(&state);
                let snaps = fs.mnt().join(format!("snapshots-{label}"));
                rows.push(measure(label, *bytes, &state, &snaps, BackendChoice::Btrfs, repeat)?);
            }
        }
    }

    println!("\n| state | backend | filesystem | ledger | artifacts | snapshot (median of {repeat}) | restore |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} MB | {} | {:.0} ms | {:.0} ms |",
            r.size, r.backend, r.fs, r.ledger_mb, r.artifacts, r.snapshot_ms, r.restore_ms
        );
    }
    Ok(())
}

fn measure(
    label: &str,
    bytes: u64,
    state: &Path,
    snaps: &Path,
    choice: BackendChoice,
    repeat: usize,
) -> Result<Row, Error> {
    eprintln!("building a {label} state in {} …", state.display());
    let artifacts = build_state(state, bytes)?;
    let ledger_mb = std::fs::metadata(state.join(LEDGER_FILE))?.len() as f64 / 1e6;
    let s = Snapshots::open(common::scenarios::config(state, snaps, choice))?;
    let mut times = Vec::new();
    let mut last: Option<String> = None;
    for i in 0..repeat {
        if let Some(id) = last.take() {
            s.delete(&id)?;
        }
        let now = Timestamp::now();
        let started = Instant::now();
        let CreateOutcome::Created(m) = s.create(Kind::Manual, Some(&format!("bench {i}")), now)? else {
            return Err("snapshot not created".into());
        };
        times.push(started.elapsed().as_secs_f64() * 1e3);
        last = Some(m.id);
    }
    times.sort_by(f64::total_cmp);
    let snapshot_ms = times[times.len() / 2];
    let started = Instant::now();
    s.restore(last.as_deref().unwrap_or_default(), Timestamp::now())?;
    let restore_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("  {} {label}: snapshot {snapshot_ms:.0} ms, restore {restore_ms:.0} ms", s.backend());
    let fs = fs_type_name(state)?;
    Ok(Row { size: label.into(), backend: s.backend(), fs, ledger_mb, artifacts, snapshot_ms, restore_ms })
}

/// A real ledger with 200 runs, padded to a quarter of `bytes`, and artifacts for the rest.
fn build_state(state: &Path, bytes: u64) -> Result<u64, Error> {
    let ledger = common::open_ledger(state);
    common::submit_runs(&ledger, 200, "bench");
    drop(ledger);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ bytes);
    let conn = rusqlite::Connection::open(state.join(LEDGER_FILE))?;
    conn.execute_batch("CREATE TABLE IF NOT EXISTS bench_filler (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")?;
    let rows = ((bytes as f64 * LEDGER_SHARE) as usize).div_ceil(FILLER_ROW_BYTES);
    let tx = conn.unchecked_transaction()?;
    for _ in 0..rows {
        tx.execute("INSERT INTO bench_filler (payload) VALUES (?1)", [rng.bytes(FILLER_ROW_BYTES)])?;
    }
    tx.commit()?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);

    // Written directly (no fsync per file: building the state is not what is measured).
    let store = ArtifactStore::open(&state.join("artifacts"))?;
    let count = ((bytes as f64 * (1.0 - LEDGER_SHARE)) as usize).div_ceil(ARTIFACT_BYTES) as u64;
    for _ in 0..count {
        let data = rng.bytes(ARTIFACT_BYTES);
        std::fs::write(store.path_of(&ArtifactStore::sha_of(&data)), &data)?;
    }
    std::process::Command::new("sync").status()?;
    Ok(count)
}

fn parse_size(s: &str) -> u64 {
    let (num, unit) = s.split_at(s.trim_end_matches(['K', 'M', 'G']).len());
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad size {s:?}: use e.g. 10M or 1G"));
    n * match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => 1,
    }
}

/// A tiny PRNG: incompressible filler without another dependency.
struct XorShift(u64);

impl XorShift {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(&self.0.to_le_bytes());
        }
        out.truncate(n);
        out
    }
}
