//! The one spawner of a process, as a long-lived service wants it: started on first use,
//! started again after it died, and after a failed start not tried again for a while —
//! a missing or older `machina-task-exec` costs one attempt (and one error in the log)
//! per [`RETRY_AFTER`], not one per task. Callers use the exec wrapper meanwhile.

use super::client::Spawner;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long after a failed start the spawner is not tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// A spawner started when first needed (see the module docs).
pub struct LazySpawner {
    program: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    current: Option<Spawner>,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for LazySpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazySpawner").field("program", &self.program).finish_non_exhaustive()
    }
}

impl LazySpawner {
    /// A spawner running `program --serve` (machina-task-exec) once it is first needed.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self { program: program.into(), state: Mutex::new(State::default()) }
    }

    /// The program it runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The running spawner, started if need be; None while none can be started.
    pub async fn get(&self) -> Option<Spawner> {
        let mut st = self.state.lock().await;
        if let Some(s) = &st.current {
            if s.failure().is_none() {
                return Some(s.clone());
            }
            // Its reader logged the death; a new one is started below.
            st.current = None;
        }
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        match Spawner::start(&self.program).await {
            Ok(s) => {
                tracing::info!(spawner_pid = s.pid(), program = %self.program.display(), "task spawner started");
                st.retry_at = None;
                st.current = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    kind = e.kind(),
                    "task spawner not started; tasks start through the exec wrapper (slower) for the next {RETRY_AFTER:?}"
                );
                st.retry_at = Some(Instant::now() + RETRY_AFTER);
                None
            }
        }
    }

    /// The pid of the running spawner, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        let st = self.state.lock().await;
        st.current.as_ref().filter(|s| s.failure().is_none()).map(Spawner::pid)
    }
}
