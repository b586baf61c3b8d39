//! Pinning the program the wrapper execs (`--verify SPEC`).
//!
//! The wrapper opens the program once, checks the *open file* against the pin and then
//! execs that same file (execveat with `AT_EMPTY_PATH`), so a file swapped in by rename
//! between the check and the exec is never run: the path is resolved exactly once.
//!
//! - `sha256:HEX`: the file's content hashes to HEX (compared in constant time). Used for
//!   plugins, whose manifest pins their content.
//! - `stat:DEV:INO:SIZE:MTIME_NS:CTIME_NS:MODE:UID:GID` (MODE in octal): the file is the
//!   inode recorded when the shell allowlist was resolved, with the same size, owner and
//!   mode, and has not been written since (a write moves mtime and ctime; a rename, new
//!   hard link, chmod or chown moves ctime). A cheap check for the allowlist, where hashing
//!   every run would cost more than the command. On kernels without fine-grained
//!   timestamps (before 6.13) a same-size rewrite within one clock tick of the pinning
//!   keeps both times; the size, owner and mode still have to match.
//!
//! Residual window: a writer that opens, rewrites and closes the file in place between the
//! check and the exec (microseconds) is not seen; a writer still holding it open makes the
//! exec fail with ETXTBSY. Content hashing detects any change before the check, and the
//! file's status is compared before and after hashing to catch a write during it.

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// What the program the wrapper execs must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The file's SHA-256.
    Sha256([u8; 32]),
    /// The file's identity when it was pinned.
    Stat(Identity),
}

/// A file's identity: which inode, and its size and change times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Device of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Last status change (writes, chmod, chown, link, rename), nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// File type and permission bits (st_mode).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Identity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &Metadata) -> Self {
        let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { dev, ino, size, mtime_ns, ctime_ns, mode, uid, gid } = self;
        write!(f, "{dev}:{ino}:{size}:{mtime_ns}:{ctime_ns}:{mode:o}:{uid}:{gid}")
    }
}

/// Why a program was not exec'd under `--verify`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The `--verify` value is malformed.
    #[error("invalid --verify {spec:?}: {message}")]
    Spec {
        /// The value given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file is not the pinned one.
    #[error("{path} is not the pinned file: expected {expected}, actual {actual}")]
    Mismatch {
        /// The program's path.
        path: String,
        /// The pin.
        expected: String,
        /// What the open file is.
        actual: String,
    },
    /// The file changed while it was being hashed.
    #[error("{path} changed while it was being verified (before {before}, after {after})")]
    Changed {
        /// The program's path.
        path: String,
        /// Identity before hashing (`stat:` form).
        before: String,
        /// Identity after hashing.
        after: String,
    },
    /// The file cannot be read or is not a regular file.
    #[error("{path}: {message}")]
    Unreadable {
        /// The program's path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl VerifyError {
    /// Stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Spec { .. } => "verify_spec",
            Self::Mismatch { .. } => "verify_mismatch",
            Self::Changed { .. } => "verify_changed",
            Self::Unreadable { .. } => "verify_unreadable",
        }
    }
}

/// The form of a `stat:` pin, for error messages.
const STAT_FORM: &str = "stat:DEV:INO:SIZE:MTIME_NS:CTIME_NS:MODE:UID:GID";

impl fmt::Display for Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256(d) => write!(f, "sha256:{}", hex::encode(d)),
            Self::Stat(id) => write!(f, "stat:{id}"),
        }
    }
}

impl FromStr for Verify {
    type Err = VerifyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: &str| VerifyError::Spec { spec: s.to_owned(), message: message.to_owned() };
        if let Some(h) = s.strip_prefix("sha256:") {
            if h.len() != 64 || h.bytes().any(|b| !matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(bad("expected 64 lowercase hex digits"));
            }
            let mut d = [0u8; 32];
            hex::decode_to_slice(h, &mut d).map_err(|e| bad(&e.to_string()))?;
            return Ok(Self::Sha256(d));
        }
        if let Some(rest) = s.strip_prefix("stat:") {
            let parts: Vec<&str> = rest.split(':').collect();
            let [dev, ino, size, mtime, ctime, mode, uid, gid] = parts[..] else {
                return Err(bad(STAT_FORM));
            };
            let u = |v: &str| v.parse::<u64>().map_err(|e| bad(&format!("{v:?}: {e}")));
            let i = |v: &str| v.parse::<i64>().map_err(|e| bad(&format!("{v:?}: {e}")));
            let n = |v: &str| v.parse::<u32>().map_err(|e| bad(&format!("{v:?}: {e}")));
            return Ok(Self::Stat(Identity {
                dev: u(dev)?,
                ino: u(ino)?,
                size: u(size)?,
                mtime_ns: i(mtime)?,
                ctime_ns: i(ctime)?,
                mode: u32::from_str_radix(mode, 8).map_err(|e| bad(&format!("mode {mode:?}: {e}")))?,
                uid: n(uid)?,
                gid: n(gid)?,
            }));
        }
        Err(bad(&format!("expected sha256:HEX or {STAT_FORM}")))
    }
}

impl Verify {
    /// Check the open `file` (opened from `path`, named in errors) against this pin.
    /// Reads the whole file for `Sha256`; the file's offset is left wherever reading ended.
    pub fn check(&self, file: &File, path: &Path) -> Result<(), VerifyError> {
        let shown = path.display().to_string();
        let unreadable = |e: std::io::Error| VerifyError::Unreadable { path: shown.clone(), message: e.to_string() };
        let before = file.metadata().map_err(unreadable)?;
        if !before.file_type().is_file() {
            return Err(VerifyError::Unreadable { path: shown, message: "not a regular file".into() });
        }
        let before = Identity::of(&before);
        match self {
            Self::Stat(expected) => {
                if *expected != before {
                    return Err(VerifyError::Mismatch {
                        path: shown,
                        expected: self.to_string(),
                        actual: Self::Stat(before).to_string(),
                    });
                }
            }
            Self::Sha256(expected) => {
                let mut hasher = Sha256::new();
                std::io::copy(&mut &*file, &mut hasher).map_err(unreadable)?;
                let actual: [u8; 32] = hasher.finalize().into();
                let after = Identity::of(&file.metadata().map_err(unreadable)?);
                if after != before {
                    let (before, after) = (Self::Stat(before).to_string(), Self::Stat(after).to_string());
                    return Err(VerifyError::Changed { path: shown, before, after });
                }
                if !bool::from(actual[..].ct_eq(&expected[..])) {
                    return Err(VerifyError::Mismatch {
                        path: shown,
                        expected: self.to_string(),
                        actual: Self::Sha256(actual).to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn specs_round_trip_and_bad_ones_are_refused() {
        for s in [format!("sha256:{EMPTY_SHA256}"), "stat:2049:131:4096:-5:1700000000123456789:100755:0:0".to_string()]
        {
            assert_eq!(s.parse::<Verify>().unwrap().to_string(), s);
        }
        for bad in [
            "sha256:abc",
            &format!("sha256:{}", EMPTY_SHA256.to_uppercase()),
            "stat:1:2:3:4:5",
            "stat:1:2:3:4:5:644:0:0:9",
            "stat:x:2:3:4:5:644:0:0",
            "stat:1:2:3:4:5:9:0:0",
            "md5:00",
            "",
        ] {
            let e = bad.parse::<Verify>().unwrap_err();
            assert_eq!(e.kind(), "verify_spec", "{bad}");
        }
    }

    #[test]
    fn sha256_and_stat_pins_catch_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prog");
        std::fs::write(&path, b"").unwrap();
        let open = || File::open(&path).unwrap();
        let sha: Verify = format!("sha256:{EMPTY_SHA256}").parse().unwrap();
        sha.check(&open(), &path).unwrap();
        let stat = Verify::Stat(Identity::of(&std::fs::metadata(&path).unwrap()));
        stat.check(&open(), &path).unwrap();

        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"x").unwrap();
        let e = sha.check(&open(), &path).unwrap_err();
        assert_eq!(e.kind(), "verify_mismatch");
        assert!(e.to_string().contains(&format!("expected sha256:{EMPTY_SHA256}, actual sha256:")), "{e}");
        assert_eq!(stat.check(&open(), &path).unwrap_err().kind(), "verify_mismatch");
        let e = Verify::Stat(Identity::of(&std::fs::metadata(dir.path()).unwrap()))
            .check(&File::open(dir.path()).unwrap(), dir.path())
            .unwrap_err();
        assert_eq!(e.kind(), "verify_unreadable");
    }
}
