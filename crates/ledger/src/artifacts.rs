//! Content-addressed artifact files: named by their sha256, written atomically, verified on read.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LedgerError, Result};

/// Files under `<root>/<first two hex>/<sha256>`; temp files under `<root>/tmp`.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ArtifactStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self> {
        let create = || -> std::io::Result<()> {
            fs::create_dir_all(root.join("tmp"))?;
            // All 256 fan-out directories exist (and are durable) before any artifact is
            // written, so a put only has to fsync the one directory it renames into.
            for i in 0..=255u8 {
                // Several processes open the store at once: losing the race is fine.
                match fs::create_dir(root.join(format!("{i:02x}"))) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                    _ => {}
                }
            }
            File::open(root)?.sync_all()
        };
        create().map_err(|e| LedgerError::Io(format!("cannot create artifact store {}: {e}", root.display())))?;
        Ok(Self { root: root.to_path_buf() })
    }

    /// Path of the artifact named `sha256`.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// Store `bytes`; returns their sha256. Idempotent: an existing artifact is kept.
    ///
    /// Temp file, fsync, rename, fsync of the directory: after this returns the
    /// artifact survives a crash, and a reader never sees a partial file.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let sha = Self::sha_of(bytes);
        self.put_hashed(&sha, bytes)?;
        Ok(sha)
    }

    /// The name `bytes` are stored under.
    pub fn sha_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Store `bytes` already known to hash to `sha` (see [`put`](Self::put)).
    pub fn put_hashed(&self, sha: &str, bytes: &[u8]) -> Result<()> {
        let sha = sha.to_string();
        let dir = self.root.join(&sha[..2]);
        let dest = dir.join(&sha);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self.root.join("tmp").join(format!("{sha}.{}", uuid::Uuid::now_v7().simple()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)?;
            File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            LedgerError::from(e)
        })?;
        Ok(())
    }

    /// Read the artifact and check its hash.
    pub fn get(&self, sha256: &str) -> Result<Vec<u8>> {
        if !is_sha256_hex(sha256) {
            return Err(LedgerError::not_found("artifact", sha256));
        }
        let bytes = match fs::read(self.path_of(sha256)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LedgerError::not_found("artifact", sha256));
            }
            Err(e) => return Err(e.into()),
        };
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            return Err(LedgerError::Integrity(format!("artifact {sha256} has content hashing to {actual}")));
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let sha = store.put(b"hello").unwrap();
        assert!(is_sha256_hex(&sha));
        assert_eq!(store.put(b"hello").unwrap(), sha);
        assert_eq!(store.get(&sha).unwrap(), b"hello");
        fs::write(store.path_of(&sha), b"hellO").unwrap();
        assert!(matches!(store.get(&sha), Err(LedgerError::Integrity(_))));
        assert!(matches!(store.get("../../etc/passwd"), Err(LedgerError::NotFound { .. })));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "no temp files left");
    }
}
