//! The worker's side of the spawner: [`Spawner::start`] runs `machina-task-exec --serve`,
//! [`Spawner::spawn`] sends one request and returns the [`SpawnedChild`], whose
//! [`SpawnedChild::wait`] resolves when the spawner reports the child reaped.
//!
//! Callers write their requests themselves (a `SOCK_SEQPACKET` message is atomic; the
//! socket's send buffer bounds what is in flight). One reader task per spawner, owned by
//! the handles, routes the replies: `Spawned`/`Failed` to the request waiting for it (by
//! id), `Exited` to the child's waiter (by pid), each over a oneshot channel. When the
//! spawner dies the reader logs an error and fails every waiter with
//! [`SpawnError::Lost`]; when the last [`Spawner`] and [`SpawnedChild`] are dropped the
//! reader is cancelled and the socket closes, and the spawner kills whatever is left,
//! reaps it and exits.

use super::proto::{self, MAX_REPLY_BYTES, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Reply, Request, SpawnMsg};
use crate::{SandboxSpec, Verify};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, socketpair};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a starting spawner has to greet.
pub const START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a spawner that lost its socket has to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Why a spawn did not give a child (or its exit status).
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The spawner is not running or could not be started. Nothing was run.
    #[error("spawner unavailable: {0}")]
    Unavailable(String),
    /// The request is larger than the spawner takes. Nothing was run.
    #[error("spawn request of {bytes} bytes exceeds the spawner's limit of {MAX_REQUEST_BYTES}")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The request cannot be expressed (a NUL byte, `=` in a variable name). Nothing was run.
    #[error("invalid spawn request: {0}")]
    Invalid(String),
    /// The child's stdio could not be set up. Nothing was run.
    #[error("child stdio: {0}")]
    Stdio(String),
    /// The spawner could not fork the child. Nothing was run.
    #[error("the spawner could not start the child: {0}")]
    Refused(String),
    /// The spawner died after it got the request: the child may have run, or may still
    /// run in its own process group; its exit status is unknown.
    #[error("the spawner died: {0}")]
    Lost(String),
}

impl SpawnError {
    /// Stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "spawner_unavailable",
            Self::TooLarge { .. } => "spawner_too_large",
            Self::Invalid(_) => "spawner_invalid_request",
            Self::Stdio(_) => "spawner_stdio",
            Self::Refused(_) => "spawner_refused",
            Self::Lost(_) => "spawner_lost",
        }
    }

    /// Whether the same request can go through the exec wrapper instead: the spawner
    /// cannot take it, and nothing of it ran.
    pub fn use_wrapper(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::TooLarge { .. })
    }
}

/// What one of the child's standard streams is.
#[derive(Debug, Default)]
pub enum ChildIo {
    /// /dev/null.
    #[default]
    Null,
    /// A new pipe; the worker's end is in the [`SpawnedChild`].
    Piped,
    /// This descriptor.
    Fd(OwnedFd),
}

/// One sandboxed process to start.
#[derive(Debug)]
pub struct SpawnRequest {
    /// Its sandbox.
    pub spec: SandboxSpec,
    /// The pin checked on the open program just before it is exec'd (as `--verify`).
    pub verify: Option<Verify>,
    /// The program: a path; without a pin, a bare name is looked up in `env`'s PATH.
    pub program: PathBuf,
    /// argv[0] as the program sees it (default: `program`).
    pub arg0: Option<OsString>,
    /// The other arguments.
    pub args: Vec<OsString>,
    /// The whole environment of the program, in this order (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Standard input.
    pub stdin: ChildIo,
    /// Standard output.
    pub stdout: ChildIo,
    /// Standard error (where the sandbox's own refusals go, `machina-task-exec: …`).
    pub stderr: ChildIo,
}

impl SpawnRequest {
    /// `program` confined by `spec`, run in the task directory with an empty environment
    /// and its stdio on /dev/null.
    pub fn new(spec: SandboxSpec, program: impl Into<PathBuf>) -> Self {
        Self {
            cwd: spec.task_dir.clone(),
            spec,
            verify: None,
            program: program.into(),
            arg0: None,
            args: Vec::new(),
            env: Vec::new(),
            stdin: ChildIo::Null,
            stdout: ChildIo::Null,
            stderr: ChildIo::Null,
        }
    }

    fn message(&self, id: u64) -> Result<SpawnMsg, SpawnError> {
        let no_nul = |what: &str, s: &OsString| match s.as_bytes().contains(&0) {
            true => Err(SpawnError::Invalid(format!("{what} contains a NUL byte: {s:?}"))),
            false => Ok(s.clone()),
        };
        let argv = std::iter::once(self.program.as_os_str().to_owned())
            .chain(self.args.iter().cloned())
            .map(|a| no_nul("an argument", &a))
            .collect::<Result<_, _>>()?;
        let mut env = Vec::with_capacity(self.env.len());
        for (k, v) in &self.env {
            if k.is_empty() || k.as_bytes().contains(&b'=') {
                return Err(SpawnError::Invalid(format!("environment variable name {k:?}")));
            }
            let mut kv = no_nul("an environment variable", k)?;
            kv.push("=");
            kv.push(no_nul("an environment value", v)?);
            env.push(kv);
        }
        Ok(SpawnMsg {
            id,
            spec_json: serde_json::to_vec(&self.spec).map_err(|e| SpawnError::Invalid(format!("spec: {e}")))?,
            verify: self.verify.as_ref().map(|v| v.to_string().into_bytes()),
            cwd: no_nul("the working directory", &self.cwd.clone().into_os_string())?,
            arg0: self.arg0.as_ref().map(|a| no_nul("arg0", a)).transpose()?,
            argv,
            env,
        })
    }
}

/// A running spawner. Cheap to clone; every clone and every [`SpawnedChild`] keeps it
/// alive, and it stops (killing what it still runs) once they are all dropped.
#[derive(Clone)]
pub struct Spawner {
    link: Arc<Link>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner").field("pid", &self.link.shared.pid).finish_non_exhaustive()
    }
}

/// Keeps the reply reader, and so the socket and the spawner, alive while a handle or a
/// child needs them.
struct Link {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct Shared {
    sock: AsyncFd<OwnedFd>,
    pid: u32,
    next_id: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Requests sent and not answered yet.
    pending: HashMap<u64, oneshot::Sender<Result<Started, SpawnError>>>,
    /// Children forked and not reaped yet.
    running: HashMap<i32, oneshot::Sender<i32>>,
    /// Why the spawner is gone, once it is.
    gone: Option<String>,
}

/// A `Spawned` reply, routed to its request.
struct Started {
    pid: i32,
    exit: oneshot::Receiver<i32>,
}

impl Spawner {
    /// Start `program --serve` (machina-task-exec) and wait for its greeting.
    pub async fn start(program: &Path) -> Result<Self, SpawnError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            SpawnError::Unavailable(format!("{} --serve: {what}: {e}", program.display()))
        };
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(|e| unavailable("socketpair", &e))?;
        let server = tokio::process::Command::new(program)
            .arg("--serve")
            .env_clear()
            .current_dir("/")
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| unavailable("cannot start it", &e))?;
        let greeted = async {
            let fl = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_GETFL)?;
            let fl = nix::fcntl::OFlag::from_bits_retain(fl) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(fl))?;
            let sock = register(ours)?;
            let hello = recv_reply(&sock, &mut [0u8; MAX_REPLY_BYTES]).await?;
            io::Result::Ok((sock, hello))
        };
        let (sock, hello) = match tokio::time::timeout(START_TIMEOUT, greeted).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(gave_up(server, unavailable("no greeting", &e)).await),
            Err(_) => return Err(gave_up(server, unavailable("no greeting", &format!("{START_TIMEOUT:?}"))).await),
        };
        let pid = match hello {
            Some(Reply::Hello { version: PROTOCOL_VERSION, pid }) => pid as u32,
            Some(other) => {
                let e = format!("{other:?}, not the greeting of protocol version {PROTOCOL_VERSION}");
                return Err(gave_up(server, unavailable("answered", &e)).await);
            }
            None => {
                let e = format!("{} (older than --serve? its stderr is in this process's log)", ended(server).await.0);
                return Err(unavailable("exited before it was ready", &e));
            }
        };
        let shared = Arc::new(Shared { sock, pid, next_id: AtomicU64::new(1), state: Mutex::new(State::default()) });
        let reader = tokio::spawn(read_replies(shared.clone(), server));
        Ok(Self { link: Arc::new(Link { shared, reader }) })
    }

    /// The spawner's pid (the parent of every child it starts).
    pub fn pid(&self) -> u32 {
        self.link.shared.pid
    }

    /// Why the spawner is gone, or None while it runs.
    pub fn failure(&self) -> Option<String> {
        self.link.shared.state().gone.clone()
    }

    /// Start one child. Returns once the spawner has forked it (before it is confined or
    /// exec'd: a sandbox or exec failure is the child's exit status and stderr, as with
    /// the wrapper).
    pub async fn spawn(&self, req: SpawnRequest) -> Result<SpawnedChild, SpawnError> {
        let shared = &self.link.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = Request::Spawn(req.message(id)?).encode();
        if msg.len() > MAX_REQUEST_BYTES {
            return Err(SpawnError::TooLarge { bytes: msg.len() });
        }
        let io = Stdio::new(req.stdin, req.stdout, req.stderr).map_err(|e| SpawnError::Stdio(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        let pending = shared.register(id, tx)?;
        let fds = io.child.each_ref().map(AsFd::as_fd);
        let sent = shared
            .sock
            .async_io(Interest::WRITABLE, |s| {
                proto::send(s.as_fd(), &msg, &fds, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from)
            })
            .await;
        if let Err(e) = sent {
            // Not sent, so nothing ran; a spawner that cannot take requests is done for.
            drop(pending);
            let why = format!("sending a request: {e}");
            shared.fail(why.clone());
            return Err(SpawnError::Unavailable(why));
        }
        // From here the reply is the reader's to route; dropping `rx` makes it kill the child.
        pending.disarm();
        drop(io.child);
        let started = rx.await.map_err(|_| SpawnError::Lost(shared.gone_reason()))??;
        Ok(SpawnedChild {
            pid: started.pid,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            exit: Some(started.exit),
            outcome: None,
            link: self.link.clone(),
        })
    }
}

/// Kill a spawner that did not become ready and return `e`.
async fn gave_up(mut server: tokio::process::Child, e: SpawnError) -> SpawnError {
    let _ = server.start_kill();
    let _ = server.wait().await;
    e
}

/// How a spawner whose socket is gone ended: it exits by itself then (killing and reaping
/// its children first), or is killed after [`EXIT_GRACE`].
/// How the spawner ended, and whether it was a clean exit (status 0: it was told to stop,
/// by SIGTERM or by the worker closing its socket, and stopped its tasks itself).
async fn ended(mut server: tokio::process::Child) -> (String, bool) {
    match tokio::time::timeout(EXIT_GRACE, server.wait()).await {
        Ok(Ok(s)) => (s.to_string(), s.success()),
        Ok(Err(e)) => (format!("exit status unknown: {e}"), false),
        Err(_) => {
            let _ = server.start_kill();
            let _ = server.wait().await;
            (format!("killed: still running {EXIT_GRACE:?} after its socket closed"), false)
        }
    }
}

/// Register the socket with the runtime's reactor.
#[allow(unsafe_code)]
fn register(sock: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd keeps the descriptor open, on the same socket, for as long as the
    // AsyncFd owns it; nothing replaces it (get_mut is never used).
    unsafe { AsyncFd::register(sock) }.map_err(|e| e.into())
}

/// Receive and decode one reply. `Ok(None)`: the spawner closed its end.
async fn recv_reply(sock: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<Option<Reply>> {
    let got = sock
        .async_io(Interest::READABLE, |s| proto::recv(s.as_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(io::Error::from))
        .await?;
    match got {
        None => Ok(None),
        Some((n, _unexpected_fds)) => {
            Reply::decode(&buf[..n]).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        }
    }
}

/// The reader task: route replies until the spawner is gone, then say so.
async fn read_replies(shared: Arc<Shared>, server: tokio::process::Child) {
    let mut buf = vec![0u8; MAX_REPLY_BYTES];
    let why = loop {
        match recv_reply(&shared.sock, &mut buf).await {
            Ok(Some(r)) => shared.route(r),
            Ok(None) => break "closed its socket".to_string(),
            Err(e) => break format!("failed: {e}"),
        }
    };
    let why = format!("spawner pid {} {why}", shared.pid);
    let lost = shared.fail(why.clone());
    // Make sure it goes (on EOF it kills and reaps its children itself), and say how.
    let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(shared.sock.get_ref()), Shutdown::Both);
    let (how, clean) = ended(server).await;
    if clean && lost == 0 {
        // A clean stop with nothing running: the worker is shutting down (or the spawner
        // was told to stop); not worth an operator's attention.
        tracing::info!(spawner_pid = shared.pid, "machina-task-exec spawner stopped: {why} ({how})");
        return;
    }
    tracing::error!(
        spawner_pid = shared.pid,
        lost_tasks = lost,
        "machina-task-exec spawner died: {why} ({how}); its running tasks are reported lost, the next spawn \
         starts a new spawner"
    );
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn gone_reason(&self) -> String {
        self.state().gone.clone().unwrap_or_else(|| "the spawner stopped".into())
    }

    /// Await the reply to request `id`; fails if the spawner is already gone.
    fn register(&self, id: u64, tx: oneshot::Sender<Result<Started, SpawnError>>) -> Result<Pending<'_>, SpawnError> {
        let mut st = self.state();
        if let Some(why) = &st.gone {
            return Err(SpawnError::Unavailable(why.clone()));
        }
        st.pending.insert(id, tx);
        Ok(Pending { shared: self, id, armed: true })
    }

    fn route(&self, reply: Reply) {
        let mut st = self.state();
        match reply {
            Reply::Spawned { id, pid } => {
                let (exit_tx, exit_rx) = oneshot::channel();
                st.running.insert(pid, exit_tx);
                let delivered =
                    st.pending.remove(&id).is_some_and(|tx| tx.send(Ok(Started { pid, exit: exit_rx })).is_ok());
                if !delivered {
                    // Whoever asked is gone (its future was dropped): nobody owns the child.
                    st.running.remove(&pid);
                    drop(st);
                    let _ = self.kill(pid);
                }
            }
            Reply::Failed { id, message } => {
                if let Some(tx) = st.pending.remove(&id) {
                    let _ = tx.send(Err(SpawnError::Refused(message)));
                }
            }
            Reply::Exited { pid, status } => {
                if let Some(tx) = st.running.remove(&pid) {
                    let _ = tx.send(status);
                }
            }
            Reply::Hello { .. } => {}
        }
    }

    /// Mark the spawner gone; fail every waiter. Returns how many children were running.
    fn fail(&self, why: String) -> usize {
        let mut st = self.state();
        st.gone.get_or_insert(why);
        let why = st.gone.clone().unwrap_or_default();
        for (_, tx) in st.pending.drain() {
            let _ = tx.send(Err(SpawnError::Lost(why.clone())));
        }
        let running = st.running.len();
        // Dropping the senders fails every wait() with Lost.
        st.running.clear();
        running
    }

    /// Ask the spawner to SIGKILL `pid` and its group (it does only while `pid` is its
    /// unreaped child, so never a reused pid). Never blocks.
    fn kill(&self, pid: i32) -> Result<(), SpawnError> {
        let msg = Request::Kill { pid }.encode();
        match proto::send(self.sock.get_ref().as_fd(), &msg, &[], MsgFlags::MSG_DONTWAIT) {
            Ok(()) => Ok(()),
            // Its socket buffer is full of requests it has not read. Kill directly: `pid`
            // is still the child unless the spawner reaped it this very instant.
            Err(Errno::EAGAIN) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL)
                .map_err(|e| SpawnError::Unavailable(format!("killing {pid}: {e}"))),
            Err(e) => Err(SpawnError::Unavailable(format!("asking the spawner to kill {pid}: {e}"))),
        }
    }
}

/// A registered request; unregistered on drop unless it was sent.
struct Pending<'a> {
    shared: &'a Shared,
    id: u64,
    armed: bool,
}

impl Pending<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.state().pending.remove(&self.id);
        }
    }
}

/// The child's stdio and the worker's ends of its pipes.
struct Stdio {
    child: [OwnedFd; proto::STDIO_FDS],
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

impl Stdio {
    fn new(stdin: ChildIo, stdout: ChildIo, stderr: ChildIo) -> io::Result<Self> {
        let (child_in, parent_in) = match stdin {
            ChildIo::Null => (dev_null()?, None),
            ChildIo::Fd(fd) => (fd, None),
            ChildIo::Piped => {
                let (r, w) = pipe_cloexec()?;
                (r, Some(pipe::Sender::from_owned_fd(w)?))
            }
        };
        let out = |io: ChildIo| -> io::Result<(OwnedFd, Option<pipe::Receiver>)> {
            match io {
                ChildIo::Null => Ok((dev_null()?, None)),
                ChildIo::Fd(fd) => Ok((fd, None)),
                ChildIo::Piped => {
                    let (r, w) = pipe_cloexec()?;
                    Ok((w, Some(pipe::Receiver::from_owned_fd(r)?)))
                }
            }
        };
        let (child_out, parent_out) = out(stdout)?;
        let (child_err, parent_err) = out(stderr)?;
        Ok(Self { child: [child_in, child_out, child_err], stdin: parent_in, stdout: parent_out, stderr: parent_err })
    }
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::File::options().read(true).write(true).open("/dev/null")?.into())
}

/// A pipe whose ends no other child inherits (each end goes to one child by SCM_RIGHTS).
fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// A child the spawner forked. Dropped before its exit was reported, it is killed with
/// its process group (like tokio's `kill_on_drop`): nobody could wait for it.
pub struct SpawnedChild {
    pid: i32,
    /// The worker's end of the child's stdin, when it is [`ChildIo::Piped`].
    pub stdin: Option<pipe::Sender>,
    /// The worker's end of the child's stdout, when it is [`ChildIo::Piped`].
    pub stdout: Option<pipe::Receiver>,
    /// The worker's end of the child's stderr, when it is [`ChildIo::Piped`].
    pub stderr: Option<pipe::Receiver>,
    exit: Option<oneshot::Receiver<i32>>,
    /// Once known: the exit status, or why it never will be.
    outcome: Option<Result<ExitStatus, String>>,
    link: Arc<Link>,
}

impl std::fmt::Debug for SpawnedChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnedChild").field("pid", &self.pid).field("outcome", &self.outcome).finish_non_exhaustive()
    }
}

impl SpawnedChild {
    /// The child's pid: after it confined itself, also its process group and session id
    /// (kill the task with killpg). The worker is not its parent: it cannot waitpid it.
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Wait for the child to exit (cancel-safe). [`SpawnError::Lost`] if the spawner died
    /// first: the child's process group may still be running.
    pub async fn wait(&mut self) -> Result<ExitStatus, SpawnError> {
        if let Some(rx) = &mut self.exit {
            let got = rx.await;
            self.exit = None;
            self.outcome = Some(match got {
                Ok(raw) => Ok(ExitStatus::from_raw(raw)),
                Err(_) => Err(self.link.shared.gone_reason()),
            });
        }
        match &self.outcome {
            Some(Ok(s)) => Ok(*s),
            Some(Err(why)) => Err(SpawnError::Lost(why.clone())),
            None => Err(SpawnError::Lost("no exit status".into())),
        }
    }

    /// Have the spawner SIGKILL the child and its process group, unless it has reaped it.
    pub fn start_kill(&mut self) -> Result<(), SpawnError> {
        match self.outcome {
            Some(_) => Ok(()),
            None => self.link.shared.kill(self.pid),
        }
    }
}

impl Drop for SpawnedChild {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            let _ = self.link.shared.kill(self.pid);
        }
    }
}
