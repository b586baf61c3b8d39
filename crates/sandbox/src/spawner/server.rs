//! `machina-task-exec --serve`: the spawner process. It reads spawn requests from the
//! socket on its stdin, starts one child per request and reports each child's pid and,
//! once it has reaped it, its wait status. The child does what the wrapper does (stdio,
//! directory, [`confine_and_exec`]) without a second exec of the wrapper.
//!
//! The fork is taken off the request's path: between requests the spawner forks the next
//! child ahead of time, which waits on a private socket; a request is handed to it (bytes
//! and descriptors as received) and answered with its pid at once. Capabilities, the
//! landlock ABI and the loader list are settled once in the spawner and inherited.
//!
//! Single-threaded by construction and checked at startup: fork in a multi-threaded
//! process leaves the child with locks held by threads that do not exist in it. SIGCHLD,
//! SIGTERM, SIGINT and SIGHUP are blocked and read from a signalfd, so one `poll` serves
//! both the socket and the children. The spawner exits when the worker closes its end
//! (or on SIGTERM); it kills and reaps every child it still has first, so it never
//! leaves a child unreaped or an unowned task running. SIGINT and SIGHUP are ignored:
//! a Ctrl-C at a terminal is the worker's to handle (it drains its tasks, then closes
//! the socket).

use super::proto::{MAX_REQUEST_BYTES, PROTOCOL_VERSION, Reply, Request, STDIO_FDS, SpawnMsg};
use crate::exec::{Args, confine_and_exec, parse_spec};
use crate::{
    DEFAULT_DEVICES, DEFAULT_READ_ONLY, EXIT_EXEC_FAILED, EXIT_SANDBOX_REFUSED, LIBRARY_READ_ONLY, Verify,
    WRAPPER_PREFIX,
};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, getsockopt, socketpair, sockopt};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

/// How the spawner's own messages start (on its stderr: the worker's, so the journal).
const SERVE_PREFIX: &str = "machina-task-exec --serve: ";

/// Run the spawner on the socket that is this process's stdin. Returns when the worker
/// closes the socket (success) or the spawner cannot go on (125, message on stderr).
pub(crate) fn serve() -> ExitCode {
    let stdin = std::io::stdin();
    match Server::new(stdin.as_fd()).and_then(Server::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            eprintln!("{SERVE_PREFIX}{m}");
            ExitCode::from(EXIT_SANDBOX_REFUSED)
        }
    }
}

struct Server<'a> {
    sock: BorrowedFd<'a>,
    signals: SignalFd,
    /// Forked and not yet reaped. Only these are ever signalled: an unreaped child's pid
    /// (and so its process group's id) cannot have been reused.
    children: HashSet<i32>,
    /// A child forked ahead of the next request and waiting for it: the fork (tens of
    /// microseconds even for this small process) happens between requests, not in one.
    idle: Option<Idle>,
    /// Children announced for a request they never got (see `spawn`): reported as 127.
    failed: HashSet<i32>,
    buf: Vec<u8>,
}

/// A pre-forked child and the spawner's end of the socket it waits on.
struct Idle {
    pid: i32,
    chan: OwnedFd,
}

/// Why the main loop ended.
enum Halt {
    /// The worker closed the socket, or SIGTERM: stop (a normal exit).
    Stop,
    /// The spawner cannot go on.
    Failed(String),
}

impl From<String> for Halt {
    fn from(m: String) -> Self {
        Self::Failed(m)
    }
}

impl<'a> Server<'a> {
    fn new(sock: BorrowedFd<'a>) -> Result<Self, String> {
        single_threaded()?;
        match getsockopt(&sock, sockopt::SockType) {
            Ok(SockType::SeqPacket) => {}
            other => return Err(format!("stdin must be the worker's SOCK_SEQPACKET socket (it is {other:?})")),
        }
        let mask = handled_signals();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        // Done once here and inherited by every child instead of redone before each exec.
        crate::preflight::landlock_abi();
        crate::loaders::dynamic_loaders_cached();
        crate::apply::drop_own_capabilities();
        let s = Self {
            sock,
            signals,
            children: HashSet::new(),
            idle: None,
            failed: HashSet::new(),
            buf: vec![0u8; MAX_REQUEST_BYTES],
        };
        s.reply(&Reply::Hello { version: PROTOCOL_VERSION, pid: std::process::id() as i32 })
            .map_err(|_| "the worker closed the socket before the greeting".to_string())?;
        Ok(s)
    }

    fn run(mut self) -> Result<(), String> {
        let result = self.serve_requests();
        self.shutdown();
        match result {
            Halt::Stop => Ok(()),
            Halt::Failed(m) => Err(m),
        }
    }

    fn serve_requests(&mut self) -> Halt {
        loop {
            if self.idle.is_none() {
                self.idle = self.fork_idle();
            }
            let step = self.wait_ready().and_then(|(requests, signals)| {
                if signals {
                    self.handle_signals()?;
                }
                if requests {
                    self.handle_request()?;
                }
                Ok(())
            });
            if let Err(halt) = step {
                return halt;
            }
        }
    }

    /// Block until the socket or the signalfd is ready: (socket, signals).
    fn wait_ready(&self) -> Result<(bool, bool), Halt> {
        loop {
            let mut fds =
                [PollFd::new(self.sock, PollFlags::POLLIN), PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {
                    let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                    return Ok((ready(&fds[0]), ready(&fds[1])));
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}").into()),
            }
        }
    }

    fn handle_signals(&mut self) -> Result<(), Halt> {
        let mut stop = false;
        loop {
            match self.signals.read_signal() {
                Ok(Some(info)) if info.ssi_signo == Signal::SIGTERM as u32 => stop = true,
                // SIGCHLD is handled by reaping below; SIGINT and SIGHUP are ignored.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading signals: {e}").into()),
            }
        }
        self.reap()?;
        if stop { Err(Halt::Stop) } else { Ok(()) }
    }

    /// Reap every child that has exited and report it (an idle one was never announced).
    fn reap(&mut self) -> Result<(), Halt> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
                Ok(ws) => {
                    let Some((pid, status)) = raw_status(ws) else { continue };
                    if self.idle.as_ref().is_some_and(|i| i.pid == pid) {
                        self.idle = None;
                        self.children.remove(&pid);
                    } else if self.children.remove(&pid) {
                        let status = if self.failed.remove(&pid) { i32::from(EXIT_EXEC_FAILED) << 8 } else { status };
                        self.reply(&Reply::Exited { pid, status })?;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("waitpid: {e}").into()),
            }
        }
    }

    fn handle_request(&mut self) -> Result<(), Halt> {
        let (n, fds) = match super::proto::recv(self.sock, &mut self.buf, MsgFlags::empty()) {
            Ok(Some(m)) => m,
            // A close with replies still unread is a reset, not an end of file: same thing.
            Ok(None) | Err(Errno::ECONNRESET) => return Err(Halt::Stop),
            Err(Errno::EINTR | Errno::EAGAIN) => return Ok(()),
            // The client never sends more than MAX_REQUEST_BYTES; answer one that did anyway.
            Err(Errno::EMSGSIZE) => {
                return self.refuse(Request::spawn_id(&self.buf), "request too large or descriptors cut off".into());
            }
            Err(e) => return Err(format!("reading requests: {e}").into()),
        };
        match Request::decode(&self.buf[..n]) {
            Ok(Request::Spawn(m)) => self.spawn(n, m, fds),
            Ok(Request::Kill { pid }) => {
                self.kill(pid);
                Ok(())
            }
            Err(e) => self.refuse(Request::spawn_id(&self.buf[..n]), format!("undecodable request: {e}")),
        }
    }

    /// Answer a request that cannot be served; one without an id can only be logged.
    fn refuse(&self, id: Option<u64>, message: String) -> Result<(), Halt> {
        match id {
            Some(id) => self.reply(&Reply::Failed { id, message }),
            None => {
                eprintln!("{SERVE_PREFIX}{message}; ignored");
                Ok(())
            }
        }
    }

    /// Start request `m` (the first `n` bytes of the buffer): handed to the idle child, or
    /// in a child forked for it if there is none.
    fn spawn(&mut self, n: usize, mut m: SpawnMsg, fds: Vec<OwnedFd>) -> Result<(), Halt> {
        let id = m.id;
        let Ok(stdio) = <[OwnedFd; STDIO_FDS]>::try_from(fds) else {
            return self.reply(&Reply::Failed { id, message: format!("expected {STDIO_FDS} descriptors (stdio)") });
        };
        if let Some(idle) = self.idle.take() {
            // Answered first: once handed the request, the child may well take this CPU.
            self.reply(&Reply::Spawned { id, pid: idle.pid })?;
            let fds = stdio.each_ref().map(AsFd::as_fd);
            if let Err(e) = super::proto::send(idle.chan.as_fd(), &self.buf[..n], &fds, MsgFlags::empty()) {
                // It died while waiting, or cannot take it: the command does not run, and
                // says so as a wrapper that cannot execute it would.
                let message =
                    format!("{WRAPPER_PREFIX}cannot execute the command: the spawner's child is gone ({e})\n");
                let _ = nix::unistd::write(&stdio[2], message.as_bytes());
                kill_task(Pid::from_raw(idle.pid));
                self.failed.insert(idle.pid);
            }
            return Ok(());
        }
        // Parsed before the fork: the child would fault in the parser's code pages.
        let cwd = std::mem::take(&mut m.cwd);
        let args = args(m);
        match fork() {
            Ok(ForkResult::Child) => child(&cwd, args, stdio),
            Ok(ForkResult::Parent { child }) => {
                // Registered before anything is sent: its exit is reported only after this.
                self.children.insert(child.as_raw());
                drop(stdio);
                self.reply(&Reply::Spawned { id, pid: child.as_raw() })
            }
            Err(e) => self.reply(&Reply::Failed { id, message: format!("fork: {e}") }),
        }
    }

    /// Fork the next idle child; None if that fails (the next request then forks its own).
    fn fork_idle(&mut self) -> Option<Idle> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).ok()?;
        match fork() {
            Ok(ForkResult::Child) => {
                drop(ours);
                idle_child(theirs, &mut self.buf)
            }
            Ok(ForkResult::Parent { child }) => {
                self.children.insert(child.as_raw());
                Some(Idle { pid: child.as_raw(), chan: ours })
            }
            Err(_) => None,
        }
    }

    fn kill(&self, pid: i32) {
        if self.children.contains(&pid) {
            kill_task(Pid::from_raw(pid));
        }
    }

    fn reply(&self, r: &Reply) -> Result<(), Halt> {
        match super::proto::send(self.sock, &r.encode(), &[], MsgFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::EPIPE | Errno::ECONNRESET) => Err(Halt::Stop),
            Err(e) => Err(format!("replying: {e}").into()),
        }
    }

    /// Kill every child (and its group) and reap them all, reporting each if the worker
    /// still listens.
    fn shutdown(&mut self) {
        self.idle = None;
        for &pid in &self.children {
            kill_task(Pid::from_raw(pid));
        }
        while !self.children.is_empty() {
            match waitpid(None, None) {
                Ok(ws) => {
                    if let Some((pid, status)) = raw_status(ws)
                        && self.children.remove(&pid)
                    {
                        let exited = Reply::Exited { pid, status }.encode();
                        let _ = super::proto::send(self.sock, &exited, &[], MsgFlags::MSG_DONTWAIT);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("{SERVE_PREFIX}reaping {} children at shutdown: {e}", self.children.len());
                    return;
                }
            }
        }
    }
}

/// A pre-forked child: wait for the request the spawner hands over, then run it. Its
/// signals are unblocked at once, so that one sent to the spawner's process group before
/// it made its own session (a terminal's Ctrl-C) ends it rather than the task it would
/// run. It exits if the spawner goes (its end of the socket closes).
fn idle_child(chan: OwnedFd, buf: &mut [u8]) -> ! {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    // The worker's socket is the spawner's alone: its end of file must not wait for us.
    let released = std::fs::File::open("/dev/null").and_then(|null| Ok(nix::unistd::dup2_stdin(&null)?));
    if released.is_err() {
        std::process::exit(i32::from(EXIT_SANDBOX_REFUSED));
    }
    // What no request changes, done ahead: the session (setsid), and opening the usual
    // read-only directories and devices for the landlock rules.
    let _ = nix::unistd::setsid();
    let usual = DEFAULT_READ_ONLY.iter().chain(&LIBRARY_READ_ONLY).chain(&DEFAULT_DEVICES);
    crate::apply::open_ahead(usual.map(Path::new));
    warm_up();
    let Ok(Some((n, fds))) = super::proto::recv(chan.as_fd(), buf, MsgFlags::empty()) else {
        std::process::exit(0);
    };
    drop(chan);
    match (Request::decode(&buf[..n]), <[OwnedFd; STDIO_FDS]>::try_from(fds)) {
        (Ok(Request::Spawn(mut m)), Ok(stdio)) => {
            let cwd = std::mem::take(&mut m.cwd);
            child(&cwd, args(m), stdio)
        }
        _ => std::process::exit(i32::from(EXIT_SANDBOX_REFUSED)),
    }
}

/// While idle, take the page faults a request would otherwise take on its path: after the
/// fork every page is shared copy-on-write with the spawner, and the code the child runs
/// is not yet mapped in it. Parse a request like a real one, and write the stack a child
/// uses (each first write copies a page).
fn warm_up() {
    let sample = SpawnMsg {
        id: 0,
        spec_json: serde_json::to_vec(&crate::SandboxSpec::new("/")).unwrap_or_default(),
        verify: Some(b"stat:1:2:3:4:5:100755:0:0".to_vec()),
        cwd: "/".into(),
        arg0: Some("/".into()),
        argv: vec!["/".into()],
        env: vec!["PATH=/".into()],
    };
    let _ = Request::decode(&Request::Spawn(sample).encode()).map(|r| match r {
        Request::Spawn(m) => drop(args(m)),
        Request::Kill { .. } => {}
    });
    let stack = std::hint::black_box([0u8; WARM_STACK_BYTES]);
    std::hint::black_box(&stack);
}

/// Stack written ahead by an idle child (what apply, the pin check and exec use, roughly).
const WARM_STACK_BYTES: usize = 64 << 10;

/// SIGKILL a child of the spawner and its process group (the child made the group with
/// setsid; before it did, no group has its id and only the child itself is hit).
fn kill_task(pid: Pid) {
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = kill(pid, Signal::SIGKILL);
}

/// fork(2).
#[allow(unsafe_code)]
fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the spawner is single-threaded (checked in Server::new; it starts no thread),
    // so no lock can be held by a thread that does not exist in the child: the child may
    // allocate and run ordinary code until it execs or exits.
    unsafe { nix::unistd::fork() }
}

/// The forked child: never returns to the spawner's loop, whatever happens (a panic
/// included).
fn child(cwd: &OsStr, args: Result<Args, String>, stdio: [OwnedFd; STDIO_FDS]) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || child_main(cwd, args, stdio)))
        .unwrap_or(EXIT_SANDBOX_REFUSED);
    std::process::exit(i32::from(code))
}

/// What posix_spawn does for the wrapper (stdio, directory), then what the wrapper does.
fn child_main(cwd: &OsStr, args: Result<Args, String>, [stdin, stdout, stderr]: [OwnedFd; STDIO_FDS]) -> u8 {
    // The task's stdio first, so that every message below reaches the task's stderr, as
    // the wrapper's would.
    let dup = nix::unistd::dup2_stdin(&stdin)
        .and_then(|()| nix::unistd::dup2_stdout(&stdout))
        .and_then(|()| nix::unistd::dup2_stderr(&stderr));
    if let Err(e) = dup {
        eprintln!("{SERVE_PREFIX}child {}: cannot set up its stdio: {e}", std::process::id());
        return EXIT_SANDBOX_REFUSED;
    }
    drop((stdin, stdout, stderr));
    if let Err(e) = nix::unistd::chdir(cwd) {
        eprintln!("{WRAPPER_PREFIX}cannot change to directory {}: {e}", Path::new(cwd).display());
        return EXIT_EXEC_FAILED;
    }
    match args {
        Ok(a) => confine_and_exec(&a),
        Err(message) => {
            eprintln!("{WRAPPER_PREFIX}{message}");
            EXIT_SANDBOX_REFUSED
        }
    }
}

/// The wrapper's arguments from a request (checked as the wrapper checks its command line).
fn args(m: SpawnMsg) -> Result<Args, String> {
    if m.argv.is_empty() {
        return Err("no command to run".into());
    }
    let verify =
        m.verify.map(|v| String::from_utf8_lossy(&v).parse::<Verify>().map_err(|e| e.to_string())).transpose()?;
    Ok(Args { spec: parse_spec(&m.spec_json)?, arg0: m.arg0, verify, report: false, argv: m.argv, env: Some(m.env) })
}

fn handled_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        s.add(sig);
    }
    s
}

/// A wait status as waitpid(2) returns it (what `ExitStatus::from_raw` takes).
fn raw_status(ws: WaitStatus) -> Option<(i32, i32)> {
    match ws {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), (code & 0xff) << 8)),
        WaitStatus::Signaled(pid, sig, core) => Some((pid.as_raw(), sig as i32 | if core { 0x80 } else { 0 })),
        _ => None,
    }
}

fn single_threaded() -> Result<(), String> {
    let cannot = |why: String| format!("cannot check that the spawner is single-threaded: {why}");
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| cannot(format!("/proc/self/status: {e}")))?;
    match status.lines().find_map(|l| l.strip_prefix("Threads:")).map(str::trim) {
        Some("1") => Ok(()),
        Some(n) => Err(format!("the spawner runs {n} threads; it forks, so it must run one")),
        None => Err(cannot("no Threads: line in /proc/self/status".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn wait_statuses_keep_their_meaning() {
        let pid = Pid::from_raw(5);
        let (_, s) = raw_status(WaitStatus::Exited(pid, 3)).unwrap();
        assert_eq!(ExitStatus::from_raw(s).code(), Some(3));
        let (_, s) = raw_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).unwrap();
        assert_eq!((ExitStatus::from_raw(s).code(), ExitStatus::from_raw(s).signal()), (None, Some(9)));
        let (_, s) = raw_status(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)).unwrap();
        assert!(ExitStatus::from_raw(s).core_dumped());
        assert_eq!(raw_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn a_request_becomes_the_wrappers_arguments() {
        let m = SpawnMsg {
            id: 1,
            spec_json: br#"{"task_dir":"/t"}"#.to_vec(),
            verify: Some(b"stat:1:2:3:4:5:100755:0:0".to_vec()),
            cwd: "/t".into(),
            arg0: Some("x".into()),
            argv: vec!["/bin/true".into()],
            env: vec!["A=1".into()],
        };
        let a = args(m.clone()).unwrap();
        assert_eq!(a.spec, crate::SandboxSpec::new("/t"));
        assert_eq!(a.env, Some(vec!["A=1".into()]));
        assert!(a.verify.is_some() && !a.report);
        for bad in [
            SpawnMsg { argv: vec![], ..m.clone() },
            SpawnMsg { spec_json: b"{}".to_vec(), ..m.clone() },
            SpawnMsg { verify: Some(b"md5:0".to_vec()), ..m },
        ] {
            assert!(args(bad).is_err());
        }
    }

    #[test]
    fn this_test_process_is_not_single_threaded() {
        // libtest runs tests on threads of their own: the check must see them.
        std::thread::scope(|s| {
            s.spawn(|| assert!(single_threaded().unwrap_err().contains("threads")));
        });
    }
}
