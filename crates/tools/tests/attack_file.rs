//! Attack suite for the `file` tool: real files in a temp dir laid out like the worker's
//! (a ledger beside the task directory, a read-only and a writable root, a directory of
//! secrets outside every root), and a hostile task trying to read, write or list its way
//! out. Each attack must fail AND leave the tree exactly as it was; controls show the
//! same operations work where they are allowed, so "blocked" is not just a broken tool.
//! Prints `attack-suite file: N tried, N blocked`.

#[path = "../../../tests/common/tally.rs"]
mod tally;

use tally::Tally;

use machina_tools::file::{FileError, FileOp, FileOutcome, FilePolicy, FileRoot, perform};
use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const LEDGER_SECRET: &str = "ledger-secret-9d2e";
const OUTSIDE_SECRET: &str = "outside-secret-51ab";
const MAX_BYTES: u64 = 64;
/// Longest any single operation may take before it counts as a hang.
const HANG_SECS: u64 = 5;

/// `base/{ledger.db, task/, data/ (read-only root), out/ (writable root), outside/secret.txt}`.
struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    task: PathBuf,
    data: PathBuf,
    out: PathBuf,
    outside: PathBuf,
    ledger: PathBuf,
    policy: FilePolicy,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let [task, data, out, outside] = ["task", "data", "out", "outside"].map(|d| base.join(d));
        for d in [&task, &data, &out, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ledger = base.join("ledger.db");
        std::fs::write(&ledger, LEDGER_SECRET).unwrap();
        std::fs::write(outside.join("secret.txt"), OUTSIDE_SECRET).unwrap();
        std::fs::write(data.join("in.txt"), "data-in").unwrap();
        std::fs::write(task.join("mine.txt"), "task-file").unwrap();
        let policy = FilePolicy {
            roots: vec![
                FileRoot { name: "data".into(), path: data.clone(), writable: false },
                FileRoot { name: "out".into(), path: out.clone(), writable: true },
            ],
            max_read_bytes: MAX_BYTES,
            max_write_bytes: MAX_BYTES,
        };
        policy.validate().unwrap();
        Self { _tmp: tmp, base, task, data, out, outside, ledger, policy }
    }

    /// Run `op` on a thread and give up after HANG_SECS, so a FIFO cannot hang the suite.
    fn run(&self, op: FileOp) -> Result<Result<FileOutcome, FileError>, &'static str> {
        let (policy, task) = (self.policy.clone(), self.task.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(perform(&policy, &task, &op));
        });
        rx.recv_timeout(Duration::from_secs(HANG_SECS)).map_err(|_| "hung")
    }

    fn ok(&self, op: FileOp) -> Vec<u8> {
        let shown = format!("{op:?}");
        match self.run(op) {
            Ok(Ok(o)) => o.stdout,
            other => panic!("control {shown} failed: {other:?}"),
        }
    }
}

/// Every entry under `root` (symlinks not followed): kind and content or link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let ft = std::fs::symlink_metadata(&path).unwrap().file_type();
            let what = if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if ft.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if ft.is_file() {
                format!("file {}", String::from_utf8_lossy(&std::fs::read(&path).unwrap()))
            } else {
                "special".to_owned()
            };
            out.insert(path, what);
        }
    }
    out
}

impl Tally {
    /// The common shape: `op` must be refused with an error, promptly, and the whole
    /// fixture tree (and the leak targets) must be unchanged.
    fn refused(&mut self, f: &Fixture, name: &str, op: FileOp) {
        let before = snapshot(&f.base);
        let got = f.run(op);
        let unchanged = snapshot(&f.base) == before;
        let leaked = match &got {
            Ok(Ok(o)) => {
                let text = String::from_utf8_lossy(&o.stdout);
                [LEDGER_SECRET, OUTSIDE_SECRET, "root:"].iter().any(|s| text.contains(s))
            }
            _ => false,
        };
        let blocked = matches!(got, Ok(Err(_))) && unchanged && !leaked;
        if let Ok(Err(e)) = &got {
            println!("  refused with {}: {e}", e.kind());
        }
        self.attack(name, blocked, format!("{got:?}, tree unchanged: {unchanged}"));
    }
}

fn read(path: &str) -> FileOp {
    FileOp::Read { path: path.into() }
}

fn write(path: &str, content: &str) -> FileOp {
    FileOp::Write { path: path.into(), content: content.as_bytes().to_vec() }
}

fn list(path: &str) -> FileOp {
    FileOp::List { path: path.into() }
}

#[test]
fn attack_suite_file() {
    let f = Fixture::new();
    controls(&f);
    let mut t = Tally::default();
    dotdot_attacks(&f, &mut t);
    absolute_attacks(&f, &mut t);
    symlink_attacks(&f, &mut t);
    special_file_attacks(&f, &mut t);
    policy_attacks(&f, &mut t);
    root_prefix_attacks(&f, &mut t);
    t.finish("file");
    assert_eq!(std::fs::read_to_string(&f.ledger).unwrap(), LEDGER_SECRET);
}

/// What a task is allowed to do works, so the refusals below are refusals.
fn controls(f: &Fixture) {
    assert_eq!(f.ok(read("mine.txt")), b"task-file");
    assert_eq!(f.ok(read("./mine.txt")), b"task-file");
    assert_eq!(f.ok(read("data:in.txt")), b"data-in");
    // A symlink that stays inside its root is fine.
    std::fs::create_dir(f.task.join("sub")).unwrap();
    std::fs::write(f.task.join("sub/inner.txt"), "inner").unwrap();
    symlink("sub/inner.txt", f.task.join("inner-link")).unwrap();
    symlink("../mine.txt", f.task.join("sub/up-link")).unwrap();
    assert_eq!(f.ok(read("inner-link")), b"inner");
    assert_eq!(f.ok(read("sub/up-link")), b"task-file");

    let listing = String::from_utf8(f.ok(list("."))).unwrap();
    assert!(listing.contains("mine.txt\tfile\t9\n") && listing.contains("sub\tdir\t"), "{listing}");
    assert_eq!(f.ok(FileOp::List { path: "data:".into() }), b"in.txt\tfile\t7\n");

    // Writes: new files, parent directories, the writable root, and a .bak of the previous version.
    let out = String::from_utf8(f.ok(write("new/deep/report.txt", "v1"))).unwrap();
    assert!(out.starts_with("wrote 2 bytes to new/deep/report.txt sha256:"), "{out}");
    f.ok(write("new/deep/report.txt", "v2"));
    assert_eq!(std::fs::read_to_string(f.task.join("new/deep/report.txt")).unwrap(), "v2");
    assert_eq!(std::fs::read_to_string(f.task.join("new/deep/report.txt.bak")).unwrap(), "v1");
    f.ok(write("out:result.txt", "r1"));
    f.ok(write("out:result.txt", "r2"));
    assert_eq!(std::fs::read_to_string(f.out.join("result.txt")).unwrap(), "r2");
    assert_eq!(std::fs::read_to_string(f.out.join("result.txt.bak")).unwrap(), "r1");

    // A temp file left by a crash mid-write corrupts nothing: the target still reads
    // whole, and the next write ignores the leftover.
    let leftover = f.task.join("new/deep/.report.txt.tmp-00000000deadbeef");
    std::fs::write(&leftover, "torn garbage").unwrap();
    assert_eq!(f.ok(read("new/deep/report.txt")), b"v2");
    f.ok(write("new/deep/report.txt", "v3"));
    assert_eq!(f.ok(read("new/deep/report.txt")), b"v3");
    assert_eq!(std::fs::read_to_string(f.task.join("new/deep/report.txt.bak")).unwrap(), "v2");
    assert_eq!(std::fs::read_to_string(&leftover).unwrap(), "torn garbage");

    // The scheme is ROOT:path; a host path into a root is refused, not translated.
    let host = format!("{}", f.data.join("in.txt").display());
    assert!(matches!(f.run(read(&host)), Ok(Err(FileError::Denied(_)))));
}

fn dotdot_attacks(f: &Fixture, t: &mut Tally) {
    for path in ["../ledger.db", "./../ledger.db", "a/../../ledger.db", "sub/../../ledger.db", "..", "sub/.."] {
        t.refused(f, &format!("read {path}"), read(path));
    }
    t.refused(f, "list ..", list(".."));
    t.refused(f, "list ../outside", list("../outside"));
    t.refused(f, "write ../planted", write("../planted", "x"));
    t.refused(f, "write ./../ledger.db", write("./../ledger.db", "x"));
    t.refused(f, "write a/../../planted", write("a/../../planted", "x"));
    let name = format!("machina-file-attack-{}", std::process::id());
    let deep = format!("../../../../../../../../../tmp/{name}");
    t.refused(f, "write far above the root into /tmp", write(&deep, "x"));
    let landed = Path::new("/tmp").join(&name);
    t.attack("nothing landed in /tmp", !landed.exists(), landed.display());
}

fn absolute_attacks(f: &Fixture, t: &mut Tally) {
    for path in ["/etc/shadow", "/etc/passwd", "/proc/self/environ"] {
        t.refused(f, &format!("read {path}"), read(path));
    }
    let ledger = f.ledger.display().to_string();
    t.refused(f, "read the ledger by absolute path", read(&ledger));
    t.refused(f, "write the ledger by absolute path", write(&ledger, "x"));
    t.refused(f, "list /", list("/"));
    t.refused(f, "list /etc", list("/etc"));
}

fn symlink_attacks(f: &Fixture, t: &mut Tally) {
    let outside_secret = f.outside.join("secret.txt");
    symlink(&f.ledger, f.task.join("abs-ledger")).unwrap();
    symlink("../ledger.db", f.task.join("rel-ledger")).unwrap();
    symlink("../../ledger.db", f.task.join("sub/rel-ledger")).unwrap();
    symlink("/proc/self/environ", f.task.join("environ")).unwrap();
    symlink("../../../../../../../../proc/self/environ", f.task.join("rel-environ")).unwrap();
    symlink("/etc/passwd", f.task.join("passwd")).unwrap();
    t.refused(f, "read an absolute symlink to the ledger", read("abs-ledger"));
    t.refused(f, "read a relative symlink to the ledger", read("rel-ledger"));
    t.refused(f, "read a relative symlink to the ledger from a subdirectory", read("sub/rel-ledger"));
    t.refused(f, "read /proc/self/environ via an absolute symlink", read("environ"));
    t.refused(f, "read /proc/self/environ via a relative symlink", read("rel-environ"));
    t.refused(f, "read /etc/passwd via a symlink", read("passwd"));

    // Intermediate components that lead out.
    symlink(&f.outside, f.task.join("abs-dir")).unwrap();
    symlink("../outside", f.task.join("rel-dir")).unwrap();
    symlink("/proc/self", f.task.join("proc-self")).unwrap();
    t.refused(f, "read through an absolute symlinked directory", read("abs-dir/secret.txt"));
    t.refused(f, "read through a relative symlinked directory", read("rel-dir/secret.txt"));
    t.refused(f, "read environ through a symlinked /proc/self", read("proc-self/environ"));
    t.refused(f, "list a symlinked directory outside", list("rel-dir"));
    t.refused(f, "list an absolute symlinked directory", list("abs-dir"));
    t.refused(f, "write a new file through a symlinked directory", write("rel-dir/planted", "x"));
    t.refused(f, "write new dirs through a symlinked directory", write("abs-dir/a/b/planted", "x"));
    t.refused(f, "overwrite a file through a symlinked directory", write("rel-dir/secret.txt", "x"));

    // The target itself is a symlink: writes never follow it.
    symlink(&outside_secret, f.task.join("abs-secret")).unwrap();
    symlink("../outside/secret.txt", f.task.join("rel-secret")).unwrap();
    symlink("mine.txt", f.task.join("inside-link")).unwrap();
    t.refused(f, "write through an absolute symlink target", write("abs-secret", "pwned"));
    t.refused(f, "write through a relative symlink target", write("rel-secret", "pwned"));
    t.refused(f, "write through an absolute symlink to the ledger", write("abs-ledger", "pwned"));
    t.refused(f, "write through a symlink even when it stays inside", write("inside-link", "x"));
    t.refused(f, "read a dangling symlink out", {
        symlink("/nonexistent/machina", f.task.join("dangling")).unwrap();
        read("dangling")
    });

    // Bait the backup: NAME.bak is a symlink out. The write may go ahead, but must
    // replace the symlink rather than write the old version through it.
    std::fs::write(f.task.join("victim.txt"), "old").unwrap();
    symlink(&outside_secret, f.task.join("victim.txt.bak")).unwrap();
    let before = snapshot(&f.outside);
    let got = f.run(write("victim.txt", "new"));
    let bak = std::fs::symlink_metadata(f.task.join("victim.txt.bak")).unwrap();
    let blocked = snapshot(&f.outside) == before
        && bak.is_file()
        && std::fs::read_to_string(f.task.join("victim.txt.bak")).unwrap() == "old";
    t.attack("write the previous version through a planted NAME.bak symlink", blocked, format!("{got:?}"));

    symlink("loop", f.task.join("loop")).unwrap();
    t.refused(f, "read a symlink loop", read("loop"));
}

fn special_file_attacks(f: &Fixture, t: &mut Tally) {
    let fifo = f.task.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    t.refused(f, "read a FIFO (must not hang)", read("fifo"));
    t.refused(f, "write over a FIFO", write("fifo", "x"));
    symlink("fifo", f.task.join("fifo-link")).unwrap();
    t.refused(f, "read a FIFO through a symlink (must not hang)", read("fifo-link"));

    t.refused(f, "read a directory", read("sub"));
    t.refused(f, "write over a directory", write("sub", "x"));
    t.refused(f, "list a file", list("mine.txt"));
}

fn policy_attacks(f: &Fixture, t: &mut Tally) {
    t.refused(f, "write a new file into the read-only root", write("data:new.txt", "x"));
    t.refused(f, "overwrite a file in the read-only root", write("data:in.txt", "x"));
    t.refused(f, "create directories in the read-only root", write("data:a/b/c.txt", "x"));

    let big = "x".repeat(MAX_BYTES as usize + 1);
    std::fs::write(f.task.join("big.txt"), &big).unwrap();
    t.refused(f, "read a file over max_read_bytes", read("big.txt"));
    t.refused(f, "write content over max_write_bytes", write("huge.txt", &big));
    t.refused(f, "overwrite with content over max_write_bytes", write("mine.txt", &big));
    for name in 0..MAX_BYTES {
        std::fs::write(f.task.join(format!("sub/many-{name:03}")), "").unwrap();
    }
    t.refused(f, "list a directory whose listing is over max_read_bytes", list("sub"));

    t.refused(f, "read a path with a NUL byte", read("mine.txt\0../../ledger.db"));
    t.refused(f, "write a path with a NUL byte", write("a\0b", "x"));
    t.refused(f, "read an empty path", read(""));
}

fn root_prefix_attacks(f: &Fixture, t: &mut Tally) {
    t.refused(f, "read from an undeclared root", read("ledger:ledger.db"));
    t.refused(f, "read from an undeclared root named like a directory", read("outside:secret.txt"));
    t.refused(f, "read from the empty root name", read(":../ledger.db"));
    t.refused(f, "read data:../x", read("data:../ledger.db"));
    t.refused(f, "read data:..", read("data:.."));
    t.refused(f, "read data:a/../../x", read("data:a/../../ledger.db"));
    t.refused(f, "read data:/etc/passwd", read("data:/etc/passwd"));
    t.refused(f, "write out:../planted", write("out:../planted", "x"));
    t.refused(f, "write out:../data/in.txt (reach the read-only root)", write("out:../data/in.txt", "x"));
    t.refused(f, "list data:..", list("data:.."));
    t.refused(f, "list out:../..", list("out:../.."));
    // A writable root's symlink into the read-only root must not make it writable.
    symlink(f.data.join("in.txt"), f.out.join("to-data")).unwrap();
    t.refused(f, "write through out: into data:", write("out:to-data", "x"));
}
