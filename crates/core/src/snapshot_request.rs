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

fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    std::fs::write(&tmp, bytes)?;
    // The file belongs to whoever owns the channel (the API's user), whoever wrote it: the
    // root-run service's answers must be readable, and removable, by the API.
    // Only when it differs: the API's sandbox refuses chown(2) altogether.
    let (owner, file) = (std::fs::metadata(dir)?, std::fs::metadata(&tmp)?);
    if (owner.uid(), owner.gid()) != (file.uid(), file.gid()) {
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))?;
    }
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Drop a request into `dir`.
pub fn submit(dir: &Path, req: &SnapshotRequest) -> std::io::Result<PathBuf> {
    if !is_valid_request_id(&req.id) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid request id"));
    }
    let bytes = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    write_atomically(dir, &format!("{}{REQUEST_SUFFIX}", req.id), &bytes)
}

/// Answer a request (the service side) and remove it.
pub fn answer(dir: &Path, result: &SnapshotResult) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(result).map_err(std::io::Error::other)?;
    write_atomically(dir, &format!("{}{RESULT_SUFFIX}", result.id), &bytes)?;
    match std::fs::remove_file(dir.join(format!("{}{REQUEST_SUFFIX}", result.id))) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Pending requests in `dir`, oldest name first (ids sort by time when they are UUIDv7).
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
        match std::fs::read(&p).map(|b| serde_json::from_slice::<SnapshotRequest>(&b)) {
            Ok(Ok(r)) if is_valid_request_id(&r.id) => out.push(r),
            // Unreadable or malformed: drop it so it cannot wedge the channel.
            _ => {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    Ok(out)
}

/// Take the answer to request `id` if it is there (and remove it).
pub fn take_result(dir: &Path, id: &str) -> std::io::Result<Option<SnapshotResult>> {
    let path = dir.join(format!("{id}{RESULT_SUFFIX}"));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let _ = std::fs::remove_file(&path);
    serde_json::from_slice(&bytes).map(Some).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let req = SnapshotRequest {
            id: "0001".into(),
            requested_by: "alice".into(),
            op: SnapshotOp::Create { label: Some("before upgrade".into()) },
        };
        submit(dir.path(), &req).unwrap();
        std::fs::write(dir.path().join("0000.request"), b"not json").unwrap();
        assert_eq!(pending(dir.path()).unwrap(), vec![req.clone()], "the malformed one is dropped");
        assert!(take_result(dir.path(), "0001").unwrap().is_none());
        let res =
            SnapshotResult { id: "0001".into(), ok: Some(serde_json::json!({"x": 1})), error_kind: None, error: None };
        answer(dir.path(), &res).unwrap();
        assert!(pending(dir.path()).unwrap().is_empty(), "answered requests are removed");
        assert_eq!(take_result(dir.path(), "0001").unwrap(), Some(res));
        assert!(take_result(dir.path(), "0001").unwrap().is_none(), "a result is taken once");
        let pin = SnapshotRequest {
            id: "0002".into(),
            requested_by: "bob".into(),
            op: SnapshotOp::Pin { snapshot: "20261123T000000Z-manual".into(), pinned: true },
        };
        submit(dir.path(), &pin).unwrap();
        assert_eq!(pending(dir.path()).unwrap(), vec![pin], "every op survives the round trip");
        let bad = SnapshotRequest { id: "../x".into(), ..req };
        assert!(submit(dir.path(), &bad).is_err());
    }
}
