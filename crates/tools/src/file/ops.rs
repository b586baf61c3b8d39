//! `read` and `list`: the operations that only look.

use super::path::Target;
use super::{FileError, FileOutcome};
use cap_fs_ext::OpenOptionsSyncExt;
use cap_std::fs::{Dir, File, FileType, FileTypeExt, OpenOptions};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Read a regular file of at most `max_bytes`.
pub(crate) fn read(dir: &Dir, target: &Target<'_>, max_bytes: u64) -> Result<FileOutcome, FileError> {
    let shown = &target.shown;
    let io = |e| FileError::from_io("read", shown, e);
    // stat first so a FIFO or device is refused without ever being opened (opening a
    // device can have side effects); open_regular checks again through the handle.
    let meta = dir.metadata(target.rel_or_dot()).map_err(io)?;
    check_regular(shown, meta.file_type())?;
    check_size(shown, meta.len(), max_bytes)?;
    let (file, len) = open_regular(dir, &target.rel, shown, max_bytes)?;
    // The file may still grow while we read: never take more than one byte past the cap.
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    check_size(shown, bytes.len() as u64, max_bytes)?;
    Ok(FileOutcome { stdout: bytes })
}

/// Open `rel` non-blocking and check its type and size through the handle: the task may
/// swap in a FIFO after the stat in [`read`], and a blocking open of a FIFO would hang
/// the worker.
fn open_regular(dir: &Dir, rel: &Path, shown: &str, max_bytes: u64) -> Result<(File, u64), FileError> {
    let io = |e| FileError::from_io("read", shown, e);
    let mut opts = OpenOptions::new();
    opts.read(true).nonblock(true);
    let file = dir.open_with(rel, &opts).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_regular(shown, meta.file_type())?;
    check_size(shown, meta.len(), max_bytes)?;
    Ok((file, meta.len()))
}

fn check_regular(shown: &str, ft: FileType) -> Result<(), FileError> {
    if ft.is_file() {
        Ok(())
    } else {
        Err(FileError::Invalid(format!("read {shown}: is {}; only regular files can be read", describe(ft))))
    }
}

fn check_size(shown: &str, len: u64, max_bytes: u64) -> Result<(), FileError> {
    if len > max_bytes {
        Err(FileError::TooLarge(format!("read {shown}: over the limit of {max_bytes} bytes")))
    } else {
        Ok(())
    }
}

/// List one directory: `name\tkind\tsize\n` per entry, sorted by name, symlinks not
/// followed (so the listing says nothing about where they point). The output is capped
/// at `max_bytes` like a read.
pub(crate) fn list(dir: &Dir, target: &Target<'_>, max_bytes: u64) -> Result<FileOutcome, FileError> {
    let shown = &target.shown;
    let io = |e| FileError::from_io("list", shown, e);
    let listed = dir.open_dir(target.rel_or_dot()).map_err(io)?;
    let mut lines: Vec<(Vec<u8>, String)> = Vec::new();
    let mut total = 0u64;
    for entry in listed.entries().map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        // An entry removed since readdir is simply not listed.
        let Ok(meta) = listed.symlink_metadata(&name) else { continue };
        let line = format!("{}\t{}\t{}\n", escape_name(&name), kind_name(meta.file_type()), meta.len());
        total += line.len() as u64;
        if total > max_bytes {
            return Err(FileError::TooLarge(format!(
                "list {shown}: the listing is over the limit of {max_bytes} bytes"
            )));
        }
        lines.push((name.as_bytes().to_vec(), line));
    }
    lines.sort_unstable();
    Ok(FileOutcome { stdout: lines.into_iter().flat_map(|(_, line)| line.into_bytes()).collect() })
}

/// A file type for messages.
fn describe(ft: FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// The kind column of a listing.
fn kind_name(ft: FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// A file name as one listing field: the task may create names with tabs, newlines or
/// invalid UTF-8 to forge listing lines, so those are escaped (`\t`, `\n`, `\\`, `\xNN`).
fn escape_name(name: &OsStr) -> String {
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{FileOp, FilePolicy, perform};
    use super::*;

    fn policy(max: u64) -> FilePolicy {
        FilePolicy { roots: vec![], max_read_bytes: max, max_write_bytes: max }
    }

    fn run(dir: &std::path::Path, op: FileOp, max: u64) -> Result<Vec<u8>, FileError> {
        perform(&policy(max), dir, &op).map(|o| o.stdout)
    }

    #[test]
    fn reads_a_file_and_caps_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), "hello").unwrap();
        assert_eq!(run(tmp.path(), FileOp::Read { path: "a".into() }, 5).unwrap(), b"hello");
        let e = run(tmp.path(), FileOp::Read { path: "a".into() }, 4).unwrap_err();
        assert!(matches!(e, FileError::TooLarge(_)), "{e}");
        let e = run(tmp.path(), FileOp::Read { path: "missing".into() }, 4).unwrap_err();
        assert!(matches!(e, FileError::NotFound(_)), "{e}");
    }

    #[test]
    fn reading_a_directory_is_invalid() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        for path in ["d", "."] {
            let e = run(tmp.path(), FileOp::Read { path: path.into() }, 10).unwrap_err();
            assert!(matches!(&e, FileError::Invalid(m) if m.contains("is a dir")), "{e}");
        }
    }

    #[test]
    fn lists_sorted_with_kinds_and_sizes() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("b.txt"), "12345").unwrap();
        std::fs::create_dir(tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink("b.txt", tmp.path().join("c")).unwrap();
        let out = String::from_utf8(run(tmp.path(), FileOp::List { path: ".".into() }, 1000).unwrap()).unwrap();
        let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
        assert_eq!(rows.len(), 3, "{out}");
        assert_eq!((rows[0][0], rows[0][1]), ("a", "dir"));
        assert_eq!(rows[1], ["b.txt", "file", "5"]);
        assert_eq!((rows[2][0], rows[2][1]), ("c", "symlink"));
        let e = run(tmp.path(), FileOp::List { path: ".".into() }, 10).unwrap_err();
        assert!(matches!(e, FileError::TooLarge(_)), "{e}");
        let e = run(tmp.path(), FileOp::List { path: "b.txt".into() }, 1000).unwrap_err();
        assert!(matches!(e, FileError::Invalid(_)), "{e}");
    }

    #[test]
    fn opening_a_fifo_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mkfifo").arg(tmp.path().join("f")).status().unwrap();
        assert!(status.success());
        let dir = Dir::open_ambient_dir(tmp.path(), cap_std::ambient_authority()).unwrap();
        // Straight to the open, past the stat, as if the FIFO were swapped in between.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(open_regular(&dir, Path::new("f"), "f", 10).map(|_| ())).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(5));
        if got.is_err() {
            // Unblock the stuck open so the thread can end, then fail.
            let _ = std::fs::OpenOptions::new().write(true).open(tmp.path().join("f"));
        }
        let e = got.expect("opening a FIFO hung").unwrap_err();
        assert!(matches!(&e, FileError::Invalid(m) if m.contains("is a FIFO")), "{e}");
    }

    #[test]
    fn names_cannot_forge_listing_lines() {
        assert_eq!(escape_name(OsStr::new("a\tfile\t0\nb")), "a\\tfile\\t0\\nb");
        assert_eq!(escape_name(OsStr::new("back\\slash")), "back\\\\slash");
        assert_eq!(escape_name(OsStr::from_bytes(b"x\xffy")), "x\\xffy");
        assert_eq!(escape_name(OsStr::new("héllo")), "héllo");
    }
}
