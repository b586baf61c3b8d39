//! A third bus client that timestamps the signals (`--diagnose`).

use super::*;

/// A signal as a third bus client received it.
pub(super) struct Seen {
    /// When the observer thread got it.
    pub(super) at: Instant,
    /// Signal name.
    pub(super) member: String,
    /// First argument.
    pub(super) run_id: String,
    /// The count (TasksQueued) or the state (RunStateChanged).
    pub(super) arg: String,
}

/// Subscribe to TasksQueued and RunStateChanged on `address` from a thread of its own;
/// returns once the match rules are in place.
pub(super) fn observe(address: &str) -> Result<mpsc::Receiver<Seen>> {
    use futures::StreamExt;
    use machina_bus::signals;
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
    let address = address.to_string();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("observer".into()).spawn(move || {
        rt.block_on(async move {
            let subscribed = async {
                let conn = zbus::connection::Builder::address(address.as_str()).build().await?;
                let queued = signals::subscribe(&conn, signals::TASKS_QUEUED).await?;
                let changed = signals::subscribe(&conn, signals::RUN_STATE_CHANGED).await?;
                zbus::Result::Ok((conn, queued, changed))
            };
            let (_conn, queued, changed) = match subscribed.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("observer cannot subscribe: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut all = futures::stream::select(queued, changed);
            while let Some(Ok(msg)) = all.next().await {
                let at = Instant::now();
                let member = msg.header().member().map(|m| m.to_string()).unwrap_or_default();
                let body = msg.body();
                let (run_id, arg) = if member == signals::TASKS_QUEUED {
                    body.deserialize::<(String, u32)>().map(|(r, n)| (r, n.to_string())).unwrap_or_default()
                } else {
                    body.deserialize::<(String, String)>().unwrap_or_default()
                };
                if tx.send(Seen { at, member, run_id, arg }).is_err() {
                    return;
                }
            }
        });
    })?;
    ready_rx.recv().map_err(|_| anyhow!("observer thread died"))??;
    Ok(rx)
}
