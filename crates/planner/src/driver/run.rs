//! One run of the driver's process: feed stdin, read stdout up to its cap and stderr's
//! tail, enforce the timeout, and kill the whole process group whatever happens.
//!
//! The process group is the one machina-task-exec creates (setsid) before it execs the
//! driver, or, unconfined, the one the child is spawned into; its id is the child's pid.
//! The group is killed when the driver exits (so nothing it started lingers), on timeout,
//! on the stdout cap, and if the caller drops the run midway.

use machina_sandbox::{EXIT_EXEC_FAILED, EXIT_SANDBOX_REFUSED, EXIT_VERIFY_FAILED, WRAPPER_PREFIX};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::DriverError;

/// How long stderr is still read once the driver's group is gone: only a process that
/// left the group (a new session) can still hold it open.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// Lines of stderr quoted in an error message.
const STDERR_TAIL_LINES: usize = 10;

/// Characters of stdout quoted when it is not JSON.
pub(super) const STDOUT_EXCERPT_CHARS: usize = 200;

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub timeout: Duration,
    pub stdout_cap: usize,
    pub stderr_cap: usize,
}

/// Kills the group when dropped, unless disarmed: a run dropped midway (its step
/// canceled) leaves nothing behind. Dropped midway, the leader has not been reaped, so
/// its pid (the group id) cannot have been reused by then.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why reading stopped early.
enum Stop {
    OverCap,
    Wait(std::io::Error),
}

/// Start `cmd`, write `input` to its stdin, and return its stdout if it exits 0 within
/// `limits`. `label` names the driver in messages; `wrapped` says whether `cmd` is
/// machina-task-exec (whose own failures are told apart by their stderr prefix).
pub(super) async fn run(
    mut cmd: tokio::process::Command,
    input: Vec<u8>,
    limits: Limits,
    label: &str,
    wrapped: bool,
) -> Result<Vec<u8>, DriverError> {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut child =
        cmd.spawn().map_err(|e| DriverError::Spawn(format!("policy driver {label} could not be started: {e}")))?;
    let mut group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw));
    // A driver that exits without reading its input makes this write fail (EPIPE): harmless.
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let stop_stderr = CancellationToken::new();
    let stderr = tokio::spawn(read_tail(child.stderr.take(), limits.stderr_cap, stop_stderr.clone()));
    let mut stdout = child.stdout.take();
    // Set once the driver has exited and its group was killed right then; until then the
    // leader is unreaped, so killing by its pid (the group id) is safe.
    let mut killed_at_exit = false;
    let outcome = tokio::time::timeout_at(deadline, async {
        let read = async { read_capped(stdout.as_mut(), limits.stdout_cap).await.ok_or(Stop::OverCap) };
        let wait = async {
            let status = child.wait().await.map_err(Stop::Wait)?;
            // Whatever the driver left running in its group goes with it; then stdout ends.
            group.kill();
            killed_at_exit = true;
            Ok(status)
        };
        tokio::try_join!(read, wait)
    })
    .await;
    if !killed_at_exit {
        // The wrapper may not have made its group yet: kill it by pid, then the group
        // again once it is gone, in case it formed in between.
        group.kill();
        let _ = child.start_kill();
        let _ = child.wait().await;
        group.kill();
    }
    group.0 = None;
    writer.abort();
    let tail = collect_stderr(stderr, stop_stderr).await;
    match outcome {
        Err(_) if killed_at_exit => Err(DriverError::Timeout(format!(
            "policy driver {label} exited, but a process it started outside its process group kept stdout open \
             until the timeout of {} ms; the driver's process group was killed",
            limits.timeout.as_millis()
        ))),
        Err(_) => Err(DriverError::Timeout(format!(
            "policy driver {label} timed out after {} ms; its process group was killed",
            limits.timeout.as_millis()
        ))),
        Ok(Err(Stop::OverCap)) => Err(DriverError::OutputCap(format!(
            "policy driver {label} printed more than {cap} bytes on stdout, over driver.stdout_cap_bytes = {cap}; \
             its process group was killed",
            cap = limits.stdout_cap
        ))),
        Ok(Err(Stop::Wait(e))) => Err(DriverError::Spawn(format!("policy driver {label}: cannot wait for it: {e}"))),
        Ok(Ok((_, status))) if !status.success() => Err(exit_error(label, status, &tail, wrapped)),
        Ok(Ok((out, _))) => Ok(out),
    }
}

/// Give stderr's reader a short grace to reach EOF, then take what it has.
async fn collect_stderr(reader: tokio::task::JoinHandle<Vec<u8>>, stop: CancellationToken) -> Vec<u8> {
    let stopper = stop.clone();
    let grace = tokio::spawn(async move {
        tokio::time::sleep(STDERR_GRACE).await;
        stopper.cancel();
    });
    let tail = reader.await.unwrap_or_default();
    grace.abort();
    tail
}

/// The error of a non-zero exit: machina-task-exec's own refusal (its exit codes with its
/// prefix on stderr), or the driver's failure with the tail of its stderr.
fn exit_error(label: &str, status: ExitStatus, stderr: &[u8], wrapped: bool) -> DriverError {
    let text = String::from_utf8_lossy(stderr);
    let wrapper_line = text.lines().find_map(|l| l.strip_prefix(WRAPPER_PREFIX));
    if wrapped && text.starts_with(WRAPPER_PREFIX) {
        let line = wrapper_line.unwrap_or_default();
        match status.code().and_then(|c| u8::try_from(c).ok()) {
            Some(EXIT_VERIFY_FAILED) => {
                return DriverError::Refused(format!("policy driver {label} refused by machina-task-exec: {line}"));
            }
            Some(EXIT_SANDBOX_REFUSED | EXIT_EXEC_FAILED) => {
                return DriverError::Spawn(format!("policy driver {label} was not started: {line}"));
            }
            _ => {}
        }
    }
    DriverError::Exit { program: label.to_owned(), status, stderr_tail: last_lines(&text, STDERR_TAIL_LINES) }
}

/// How an exit status reads in a message: `exited 3`, `was killed by signal 9`.
pub(super) fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        (None, None) => "ended".into(),
    }
}

/// The last `n` non-empty lines of `text`, joined by newlines.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Read to EOF; None as soon as more than `cap` bytes arrived.
async fn read_capped(r: Option<&mut (impl AsyncRead + Unpin)>, cap: usize) -> Option<Vec<u8>> {
    let Some(r) = r else { return Some(Vec::new()) };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return Some(kept),
            Ok(n) if kept.len() + n > cap => return None,
            Ok(n) => kept.extend_from_slice(&buf[..n]),
        }
    }
}

/// Read until EOF or `stop`, keeping the last `cap` bytes.
async fn read_tail(r: Option<impl AsyncRead + Unpin>, cap: usize, stop: CancellationToken) -> Vec<u8> {
    let Some(mut r) = r else { return Vec::new() };
    let mut tail = VecDeque::with_capacity(cap.min(64 << 10));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => n,
            _ = stop.cancelled() => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend(&buf[..n]);
                let over = tail.len().saturating_sub(cap);
                tail.drain(..over);
            }
        }
    }
    tail.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_wrappers_own_failures_count_as_its() {
        let says = |m: &str| format!("{WRAPPER_PREFIX}{m}\n").into_bytes();
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let e = exit_error("d", code(124), &says("/x is not the pinned file"), true);
        assert_eq!((e.kind(), e.to_string().contains("/x is not the pinned file")), ("driver_refused", true));
        assert_eq!(exit_error("d", code(125), &says("required protection"), true).kind(), "driver_spawn");
        assert_eq!(exit_error("d", code(127), &says("cannot execute"), true).kind(), "driver_spawn");
        assert_eq!(exit_error("d", code(124), b"its own 124\n", true).kind(), "driver_exit");
        assert_eq!(exit_error("d", code(124), &says("unconfined"), false).kind(), "driver_exit");
        assert_eq!(exit_error("d", code(3), &says("imitation"), true).kind(), "driver_exit");
    }

    #[test]
    fn exit_messages_quote_the_last_stderr_lines() {
        let stderr: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let e = exit_error("/d/drv.sh", ExitStatus::from_raw(2 << 8), stderr.as_bytes(), true);
        let m = e.to_string();
        assert!(m.starts_with("policy driver /d/drv.sh exited 2: line 21\n"), "{m}");
        assert!(m.ends_with("line 30") && !m.contains("line 20\n"), "{m}");
        let killed = exit_error("/d/drv.sh", ExitStatus::from_raw(9), b"", true).to_string();
        assert_eq!(killed, "policy driver /d/drv.sh was killed by signal 9: (nothing on stderr)");
    }

    #[tokio::test]
    async fn stdout_over_its_cap_stops_reading_and_stderr_keeps_its_tail() {
        let data = vec![b'x'; 100];
        assert_eq!(read_capped(Some(&mut &data[..]), 100).await, Some(data.clone()));
        assert_eq!(read_capped(Some(&mut &data[..]), 99).await, None);
        let text = b"first\nsecond\nthird\n".to_vec();
        let tail = read_tail(Some(&text[..]), 13, CancellationToken::new()).await;
        assert_eq!(tail, b"second\nthird\n");
    }
}
