//! Idle tracking for the idle exit: every HTTP request and D-Bus call holds a
//! [`Busy`] guard while it runs (a live event stream holds one for its whole
//! life), and the watcher in `daemon` exits once nothing has been busy for
//! `api.idle_exit_secs`. Socket and bus activation start the service again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::time::Instant;

/// Shared counters: work in flight and when the last of it ended or began.
#[derive(Debug, Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    served: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// Nothing in flight; idle since now.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                in_flight: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
                served: AtomicU64::new(0),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    /// Mark work as begun; it ends when the guard drops.
    pub fn begin(&self) -> Busy {
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        self.inner.served.fetch_add(1, Ordering::Relaxed);
        self.inner.last_ms.store(self.now_ms(), Ordering::SeqCst);
        Busy { activity: self.clone() }
    }

    /// How long nothing has been in flight (zero while something is).
    pub fn idle_for(&self) -> std::time::Duration {
        if self.inner.in_flight.load(Ordering::SeqCst) > 0 {
            return std::time::Duration::ZERO;
        }
        let last = self.inner.last_ms.load(Ordering::SeqCst);
        std::time::Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Requests and calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::SeqCst)
    }

    /// Requests and calls begun since start.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }
}

/// Work in flight; dropping it records the end.
#[derive(Debug)]
pub struct Busy {
    activity: Activity,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.activity;
        a.inner.last_ms.store(a.now_ms(), Ordering::SeqCst);
        a.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(5));
        let busy = a.begin();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(a.idle_for(), Duration::ZERO, "a request in flight is never idle");
        drop(busy);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.idle_for(), Duration::from_secs(2));
        assert_eq!((a.in_flight(), a.served()), (0, 1));
    }
}
