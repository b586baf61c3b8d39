//! Snapshot requests from D-Bus: the API runs unprivileged, so it queues each
//! request for the root-run snapshot service (see machina_core::snapshot_request)
//! and waits for the answer.

use machina_bus::BusError;
use machina_core::snapshot_request::{self as channel, SnapshotOp, SnapshotRequest};
use std::path::PathBuf;
use std::time::Duration;

/// How long a D-Bus call waits for the snapshot service (clients time out at 25 s).
const ANSWER_WAIT: Duration = Duration::from_secs(20);
/// How often the answer is looked for.
const ANSWER_POLL: Duration = Duration::from_millis(50);

/// Queue `op` for the snapshot service as `user` and wait for its answer (JSON) in `results`.
pub async fn ask(dir: PathBuf, results: PathBuf, user: &str, op: SnapshotOp) -> Result<String, BusError> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let req = SnapshotRequest { id: id.clone(), requested_by: user.to_string(), op };
    let d = dir.clone();
    tokio::task::spawn_blocking(move || channel::submit(&d, &req))
        .await
        .map_err(|e| BusError::Internal(e.to_string()))?
        .map_err(|e| {
            BusError::Unavailable(format!(
                "cannot queue the snapshot request in {} ({e}); is machina-snapshot-requests.path installed?",
                dir.display()
            ))
        })?;
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        let (d, i) = (results.clone(), id.clone());
        let answer = tokio::task::spawn_blocking(move || channel::result(&d, &i))
            .await
            .map_err(|e| BusError::Internal(e.to_string()))?
            .map_err(|e| BusError::Internal(format!("reading the snapshot answer: {e}")))?;
        if let Some(a) = answer {
            return match (a.ok, a.error_kind, a.error) {
                (Some(v), _, _) => Ok(v.to_string()),
                (None, kind, msg) => Err(from_kind(kind.as_deref().unwrap_or("internal"), msg.unwrap_or_default())),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            let (d, i) = (dir.clone(), id.clone());
            let withdrawn = tokio::task::spawn_blocking(move || channel::withdraw(&d, &i)).await.unwrap_or(false);
            return Err(BusError::Unavailable(if withdrawn {
                format!("snapshot request {id} was not answered within {} s and was withdrawn", ANSWER_WAIT.as_secs())
            } else {
                format!(
                    "snapshot request {id} is still running after {} s; see machinactl snapshot list",
                    ANSWER_WAIT.as_secs()
                )
            }));
        }
        tokio::time::sleep(ANSWER_POLL).await;
    }
}

fn from_kind(kind: &str, message: String) -> BusError {
    match kind {
        "invalid_input" => BusError::InvalidInput(message),
        "not_found" => BusError::NotFound(message),
        "illegal_state" => BusError::IllegalState(message),
        "unavailable" => BusError::Unavailable(message),
        "integrity" => BusError::Integrity(message),
        _ => BusError::Internal(message),
    }
}
