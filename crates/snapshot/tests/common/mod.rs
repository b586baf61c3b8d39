//! Shared helpers for the snapshot tests and the benchmark: a loop-mounted btrfs, a state
//! directory with a real ledger, and a summary of a state to compare.

#![allow(dead_code)]

use machina_ledger::{Ledger, LedgerOptions, NewIntent, NewRun, Submission};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

pub mod scenarios;

/// A btrfs filesystem on a loop device: image file, `losetup --find --show`, mount.
/// Dropping it unmounts, detaches only the loop device it attached, and removes the image.
pub struct LoopBtrfs {
    _serial: MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    loop_dev: Option<String>,
    mounted: bool,
}

/// One loop filesystem at a time per test binary: tests run on threads.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Why btrfs tests cannot run here, if they cannot.
pub fn btrfs_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (a loop device and mount need root)".into());
    }
    for tool in ["mkfs.btrfs", "btrfs", "losetup", "mount", "umount"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} not found (apt-get install btrfs-progs)"));
        }
    }
    None
}

impl LoopBtrfs {
    /// A fresh btrfs of `size` (e.g. "512M") mounted under a temp dir in /var/tmp, or `None`
    /// (after printing why) when not root or btrfs-progs is missing. Panics if setup fails
    /// otherwise, so CI (root, btrfs-progs installed) never skips silently.
    pub fn setup(size: &str) -> Option<Self> {
        if let Some(why) = btrfs_unavailable() {
            eprintln!("SKIPPING btrfs test: {why}");
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::Builder::new().prefix("machina-btrfs-").tempdir_in("/var/tmp").expect("temp dir");
        let mut fs = Self { _serial: serial, dir, loop_dev: None, mounted: false };
        let img = fs.dir.path().join("btrfs.img");
        let mnt = fs.mnt();
        std::fs::create_dir(&mnt).unwrap();
        let img_s = img.to_str().unwrap();
        run("truncate", &["-s", size, img_s]).unwrap();
        run("mkfs.btrfs", &["-q", "-f", img_s]).unwrap();
        fs.loop_dev = Some(run("losetup", &["--find", "--show", img_s]).expect("losetup --find --show"));
        run("mount", &["-t", "btrfs", fs.loop_dev.as_deref().unwrap(), mnt.to_str().unwrap()]).expect("mount");
        fs.mounted = true;
        Some(fs)
    }

    /// The mount point.
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Create a subvolume at `path`.
    pub fn subvolume(&self, path: &Path) {
        run("btrfs", &["-q", "subvolume", "create", path.to_str().unwrap()]).unwrap();
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let mnt = self.mnt();
        if self.mounted && run("umount", &[mnt.to_str().unwrap()]).is_err() {
            let _ = run("umount", &["-l", mnt.to_str().unwrap()]);
        }
        if let Some(dev) = self.loop_dev.take()
            && let Err(e) = run("losetup", &["-d", &dev])
        {
            eprintln!("cannot detach {dev}: {e}");
        }
    }
}

/// Open (creating) the ledger in `state` and submit `n` runs; returns their ids.
pub fn submit_runs(ledger: &Ledger, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let intent = NewIntent { goal: format!("{tag} {i}"), inputs: json!({ "i": i }), constraints: json!({}) };
            let run = NewRun {
                intent_id: String::new(),
                recipe: "sandbox-default".into(),
                partition_key: "snapshots".into(),
                workload: json!({ "concurrency": 1 }),
                concurrency: 1,
            };
            let s = ledger.submit_blocking(None, Submission::Enqueue(intent, run)).expect("submit");
            s.body["run"]["id"].as_str().expect("run id").to_string()
        })
        .collect()
}

/// A ledger in `state` (created if needed).
pub fn open_ledger(state: &Path) -> Ledger {
    Ledger::open(LedgerOptions::new(state)).expect("open ledger")
}

/// Store `n` artifacts of `bytes` bytes each, distinct by `tag`; returns their names.
pub fn put_artifacts(ledger: &Ledger, n: usize, bytes: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let mut data = format!("{tag}-{i}-").into_bytes();
            data.resize(bytes.max(data.len()), (i % 251) as u8);
            ledger.artifacts().put(&data).expect("put artifact")
        })
        .collect()
}

/// What a state holds, to compare two states: run and intent ids from the ledger, and every
/// artifact file with its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub runs: Vec<String>,
    pub intents: Vec<String>,
    pub artifacts: BTreeMap<String, u64>,
}

/// `immutable` opens the ledger without touching its -shm/-wal (for read-only snapshots,
/// whose WAL the pre-snapshot checkpoint emptied).
pub fn summary(root: &Path, immutable: bool) -> Summary {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let uri = format!("file:{}{}", root.join("ledger.db").display(), if immutable { "?immutable=1" } else { "" });
    let conn = rusqlite::Connection::open_with_flags(uri, flags).expect("open ledger read-only");
    let ids = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    let runs = ids("SELECT id FROM runs ORDER BY id");
    let intents = ids("SELECT id FROM intents ORDER BY id");
    let mut artifacts = BTreeMap::new();
    let store = root.join("artifacts");
    for fan in std::fs::read_dir(&store).unwrap() {
        let fan = fan.unwrap();
        if fan.file_name() == "tmp" || !fan.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path()).unwrap() {
            let f = f.unwrap();
            artifacts.insert(f.file_name().to_string_lossy().into_owned(), f.metadata().unwrap().len());
        }
    }
    Summary { runs, intents, artifacts }
}

/// An instant from RFC 3339 text.
pub fn utc(s: &str) -> jiff::Timestamp {
    s.parse().expect("an RFC 3339 instant")
}
