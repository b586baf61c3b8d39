//! Provider credentials, looked up by id in directories given in order: systemd's
//! `$CREDENTIALS_DIRECTORY` (set up with `LoadCredential=`), then the root-only
//! `judge.credentials_dir`. Read at each question, so a rotated file is picked up; never
//! printed (a [`SecretString`] shows as redacted and is wiped on drop).

use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An API key, as read from its file (surrounding whitespace trimmed).
#[derive(Debug, Clone)]
pub(crate) struct Credential(SecretString);

impl Credential {
    /// The key, for the one place that puts it into a header.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Finds credential `id` in the first directory that holds a usable file named `id`.
/// `Err` says where it looked and why each place did not count, for the decision.
pub(crate) async fn find(dirs: &[PathBuf], id: &str) -> Result<Credential, String> {
    let mut notes = Vec::new();
    for dir in dirs {
        match read_one(&dir.join(id)).await {
            Ok(Some(c)) => return Ok(c),
            Ok(None) => notes.push(format!("not in {}", dir.display())),
            Err(why) => notes.push(why),
        }
    }
    if notes.is_empty() {
        notes.push("no credentials directory given".into());
    }
    Err(format!("credential {id:?}: {}", notes.join(", ")))
}

/// `Ok(None)`: no such file. `Err`: a file that must not be used, and why.
async fn read_one(path: &Path) -> Result<Option<Credential>, String> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    // A key anyone on the host can read is as good as leaked: refuse it rather than use it.
    if meta.permissions().mode() & 0o004 != 0 {
        tracing::warn!(path = %path.display(), "judge credential file is readable by everyone; ignored (chmod 0600 it)");
        return Err(format!("{} is readable by everyone (chmod 0600 it)", path.display()));
    }
    let text = tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Some(Credential(SecretString::from(key.to_owned()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[tokio::test]
    async fn first_directory_wins_and_whitespace_is_trimmed() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write(a.path(), "machina-judge", "key-from-systemd\n", 0o400);
        write(b.path(), "machina-judge", "key-from-etc\n", 0o600);
        let dirs = [a.path().to_path_buf(), b.path().to_path_buf()];
        assert_eq!(find(&dirs, "machina-judge").await.unwrap().expose(), "key-from-systemd");
        std::fs::remove_file(a.path().join("machina-judge")).unwrap();
        assert_eq!(find(&dirs, "machina-judge").await.unwrap().expose(), "key-from-etc");
    }

    #[tokio::test]
    async fn missing_empty_and_world_readable_files_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        let dirs = [d.path().to_path_buf()];
        let e = find(&dirs, "machina-judge").await.unwrap_err();
        assert!(e.contains("machina-judge") && e.contains("not in"), "{e}");
        write(d.path(), "machina-judge", " \n", 0o600);
        assert!(find(&dirs, "machina-judge").await.unwrap_err().contains("empty"));
        write(d.path(), "machina-judge", "k", 0o644);
        assert!(find(&dirs, "machina-judge").await.unwrap_err().contains("readable by everyone"));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = Credential(SecretString::from("sk-very-secret".to_owned()));
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }
}
