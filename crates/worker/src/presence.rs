//! A worker's life signs and ears: it checks in with the ledger (WorkersOnline),
//! pets the systemd watchdog while the ledger answers, keeps STATUS= current,
//! and wakes its idle slots when a TasksQueued signal arrives.

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use machina_ledger::Ledger;

/// How often a worker checks in (WorkersOnline counts those seen in the last 30 s).
pub const CHECK_IN_EVERY: Duration = Duration::from_secs(10);

/// Check in every [`CHECK_IN_EVERY`] (or at half the watchdog interval, if shorter) until
/// `shutdown`, then check out.
pub async fn check_in(ledger: Ledger, id: String, shutdown: CancellationToken) {
    let watchdog = machina_daemon::notify::watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.map_or(CHECK_IN_EVERY, |w| w.min(CHECK_IN_EVERY)));
    let pid = std::process::id();
    // What this worker's tasks get, for /health and the D-Bus Sandbox property.
    let sandbox = serde_json::to_string(&machina_sandbox::preflight()).ok();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        match ledger.worker_seen(&id, pid, sandbox.clone()).await {
            Ok(()) => {
                if watchdog.is_some() {
                    machina_daemon::notify::watchdog();
                }
            }
            Err(e) => {
                tracing::warn!(worker = %id, error = %e, "cannot check in with the ledger");
                machina_daemon::notify::status(&format!("ledger unavailable: {e}"));
            }
        }
    }
    if let Err(e) = ledger.worker_gone(&id).await {
        tracing::warn!(worker = %id, error = %e, "cannot check out of the ledger");
    }
}

/// Wake every idle slot on each TasksQueued signal until `shutdown` or the bus goes away
/// (the slots' poll keeps working either way).
pub async fn listen_for_work(bus: zbus::Connection, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut stream = match machina_bus::signals::subscribe(&bus, machina_bus::signals::TASKS_QUEUED).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot subscribe to TasksQueued; polling only: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(_)) => wake.notify_waiters(),
                Some(Err(e)) => tracing::debug!("bad TasksQueued message: {e}"),
                None => {
                    tracing::warn!("the bus connection closed; polling only");
                    return;
                }
            },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Fire `cancels` on each RunStateChanged(…, "canceled") so slots running a task of that run
/// renew their lease at once and learn it was canceled (instead of at their next heartbeat).
pub async fn listen_for_cancels(bus: zbus::Connection, cancels: Arc<Notify>, shutdown: CancellationToken) {
    let mut stream = match machina_bus::signals::subscribe(&bus, machina_bus::signals::RUN_STATE_CHANGED).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot subscribe to RunStateChanged; cancellations are seen at the next heartbeat: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(m)) => {
                    if m.body().deserialize::<(String, String)>().is_ok_and(|(_, state)| state == "canceled") {
                        cancels.notify_waiters();
                    }
                }
                Some(Err(e)) => tracing::debug!("bad RunStateChanged message: {e}"),
                None => return,
            },
            _ = shutdown.cancelled() => return,
        }
    }
}
