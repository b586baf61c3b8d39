//! The snapshot request channel: how the unprivileged API asks the root-run
//! snapshot service to act (D-Bus `CreateSnapshot`, `ListSnapshots`, …).
//!
//! The API (user machina) drops `<id>.request` into a directory it owns
//! (`/run/machina/snapshot-requests`); `machina-snapshot-requests.path` starts
//! `machina-snapshot serve-requests`, which answers each one with `<id>.result`
//! and removes the request. Files are written to a temp name and renamed, so a
//! reader never sees half a request or result. Restores are not offered here:
//! they stop and start the services and stay a root command on the machine.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Suffix of a pending request.
pub const REQUEST_SUFFIX: &str = ".request";
/// Suffix of an answer.
pub const RESULT_SUFFIX: &str = ".result";

/// What is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum SnapshotOp {
    /// List snapshots.
    List,
    /// A manual snapshot, optionally labelled.
    Create {
        /// Label.
        label: Option<String>,
    },
    /// Pin or unpin a snapshot.
    Pin {
        /// Snapshot id.
        snapshot: String,
        /// Pin (true) or unpin.
        pinned: bool,
    },
    /// Delete a snapshot.
    Delete {
        /// Snapshot id.
        snapshot: String,
    },
}

/// A request as written to the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Request id (also the file name; the op's fields must not reuse the name).
    pub id: String,
    /// Who asked (user name from the bus credentials), for the log.
    pub requested_by: String,
    /// What to do.
    #[serde(flatten)]
    pub op: SnapshotOp,
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResult {
    /// The request answered.
    pub id: String,
    /// Success: the command's JSON output (as `machina-snapshot --json` prints it).
    pub ok: Option<serde_json::Value>,
    /// Failure: the stable error kind (`not_found`, `illegal_state`, …).
    pub error_kind: Option<String>,
    /// Failure: what went wrong.
    pub error: Option<String>,
}

/// A request id is 1-64 characters of `[A-Za-z0-9-]` (it names files).
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Largest request file read (a request is a few hundred bytes).
const REQUEST_MAX_BYTES: u64 = 64 * 1024;
/// Answers nobody collected are removed after this long.
pub const RESULT_KEEP_SECS: u64 = 600;

fn io_err(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// Drop a request into `dir` (the API's side: its own directory).
pub fn submit(dir: &Path, req: &SnapshotRequest) -> std::io::Result<PathBuf> {
    if !is_valid_request_id(&req.id) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid request id"));
    }
    let bytes = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{}.tmp", req.id));
    let dest = dir.join(format!("{}{REQUEST_SUFFIX}", req.id));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Read one request file without trusting it: the directory belongs to the (less
/// privileged) API user, so the file may be a symlink, a FIFO, huge, or lie about its id.
fn read_request(path: &Path) -> std::io::Result<SnapshotRequest> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io_err("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(REQUEST_MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > REQUEST_MAX_BYTES {
        return Err(io_err("too large"));
    }
    let req: SnapshotRequest = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    let stem = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(REQUEST_SUFFIX));
    if !is_valid_request_id(&req.id) || stem != Some(req.id.as_str()) {
        return Err(io_err("its id does not match its name"));
    }
    Ok(req)
}

/// Pending requests in `dir`, oldest name first (ids sort by time when they are UUIDv7).
/// Anything unreadable, malformed or not a plain file is removed so it cannot wedge the channel.
pub fn pending(dir: &Path) -> std::io::Result<Vec<SnapshotRequest>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(REQUEST_SUFFIX) && !n.starts_with('.'))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        match read_request(&p) {
            Ok(r) => out.push(r),
            Err(_) => {
                let _ = std::fs::remove_file(&p); // unlink never follows a symlink
            }
        }
    }
    Ok(out)
}

/// Answer a request (the root-run service's side): the result goes into `results`, a
/// directory only root may write (so nothing can be planted there), readable by the API's
/// group; the request is removed from `requests`.
pub fn answer(requests: &Path, results: &Path, result: &SnapshotResult) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    if !is_valid_request_id(&result.id) {
        return Err(io_err("invalid request id"));
    }
    let bytes = serde_json::to_vec(result).map_err(std::io::Error::other)?;
    let tmp = results.join(format!(".{}.tmp", result.id));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)?;
    f.write_all(&bytes)?;
    // Readable by the directory's group (the API's), whatever this process's umask.
    std::os::unix::fs::fchown(&f, None, Some(std::fs::metadata(results)?.gid()))?;
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
    drop(f);
    std::fs::rename(&tmp, results.join(format!("{}{RESULT_SUFFIX}", result.id)))?;
    match std::fs::remove_file(requests.join(format!("{}{REQUEST_SUFFIX}", result.id))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Remove answers older than [`RESULT_KEEP_SECS`] (the service's side; the API cannot delete).
pub fn remove_stale_results(results: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for e in std::fs::read_dir(results)?.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > RESULT_KEEP_SECS);
        if old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The answer to request `id`, if it is there (the API's side).
pub fn result(results: &Path, id: &str) -> std::io::Result<Option<SnapshotResult>> {
    if !is_valid_request_id(id) {
        return Err(io_err("invalid request id"));
    }
    let bytes = match std::fs::read(results.join(format!("{id}{RESULT_SUFFIX}"))) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other)
}

/// Withdraw a request nobody answered yet (the API gave up waiting): true if it was withdrawn.
pub fn withdraw(requests: &Path, id: &str) -> bool {
    is_valid_request_id(id) && std::fs::remove_file(requests.join(format!("{id}{REQUEST_SUFFIX}"))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, op: SnapshotOp) -> SnapshotRequest {
        SnapshotRequest { id: id.into(), requested_by: "alice".into(), op }
    }

    #[test]
    fn a_request_round_trips_through_the_directories() {
        let (requests, results) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let create = req("0001", SnapshotOp::Create { label: Some("before upgrade".into()) });
        let pin = req("0002", SnapshotOp::Pin { snapshot: "20261123T000000Z-manual".into(), pinned: true });
        submit(requests.path(), &create).unwrap();
        submit(requests.path(), &pin).unwrap();
        assert_eq!(pending(requests.path()).unwrap(), vec![create, pin], "every op survives the round trip");
        assert!(result(results.path(), "0001").unwrap().is_none());
        let res =
            SnapshotResult { id: "0001".into(), ok: Some(serde_json::json!({"x": 1})), error_kind: None, error: None };
        answer(requests.path(), results.path(), &res).unwrap();
        assert_eq!(pending(requests.path()).unwrap().len(), 1, "the answered request is removed");
        assert_eq!(result(results.path(), "0001").unwrap(), Some(res));
        assert!(withdraw(requests.path(), "0002") && pending(requests.path()).unwrap().is_empty());
        assert!(submit(requests.path(), &req("../x", SnapshotOp::List)).is_err());
    }

    #[test]
    fn hostile_request_files_are_dropped_not_followed() {
        let (requests, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let secret = outside.path().join("secret");
        std::fs::write(&secret, serde_json::to_vec(&req("0003", SnapshotOp::List)).unwrap()).unwrap();
        std::os::unix::fs::symlink(&secret, requests.path().join("0003.request")).unwrap();
        std::fs::write(requests.path().join("0004.request"), b"not json").unwrap();
        // A valid request under another request's name.
        std::fs::write(
            requests.path().join("0005.request"),
            serde_json::to_vec(&req("0006", SnapshotOp::List)).unwrap(),
        )
        .unwrap();
        nix::unistd::mkfifo(&requests.path().join("0007.request"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(pending(requests.path()).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(requests.path()).unwrap().count(), 0, "all removed");
        assert!(secret.exists(), "the symlink's target is untouched");
    }
}
