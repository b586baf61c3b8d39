//! The spawner's wire protocol: one `SOCK_SEQPACKET` message per request or reply, so a
//! message never needs framing and the descriptors passed with a request (`SCM_RIGHTS`)
//! belong to exactly that request.
//!
//! A message is a tag byte and fixed fields in little-endian order; byte strings are a
//! `u32` length and the bytes, lists a `u32` count and the strings, optional strings a
//! presence byte. Arguments and environment entries are bytes, not UTF-8: they go to
//! execve as they are.
//!
//! ```text
//! worker → spawner   Spawn  id, spec JSON, verify?, cwd, arg0?, argv[], env[]  + 3 fds (stdin, stdout, stderr)
//!                    Kill   pid                       (SIGKILL to the child and its group, if still unreaped)
//! spawner → worker   Hello  version, spawner pid      (once, first)
//!                    Spawned id, pid
//!                    Failed id, message               (nothing was forked)
//!                    Exited pid, wait status          (the child was reaped)
//! ```

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// Version the spawner announces in its Hello; the client refuses any other.
pub(crate) const PROTOCOL_VERSION: u32 = 1;
/// Largest spawn request, in bytes (well below the socket's send buffer, which bounds a
/// `SOCK_SEQPACKET` message). Larger requests go through the exec wrapper instead.
pub const MAX_REQUEST_BYTES: usize = 128 << 10;
/// Largest reply, in bytes (a failure message is cut to fit).
pub(crate) const MAX_REPLY_BYTES: usize = 4096;
/// Descriptors sent with every spawn request: the child's stdin, stdout and stderr.
pub(crate) const STDIO_FDS: usize = 3;

const TAG_SPAWN: u8 = b'S';
const TAG_KILL: u8 = b'K';
const TAG_HELLO: u8 = b'H';
const TAG_SPAWNED: u8 = b'P';
const TAG_FAILED: u8 = b'F';
const TAG_EXITED: u8 = b'X';

/// One process to start, as the spawner's child needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpawnMsg {
    /// Chosen by the client; the reply carries it back.
    pub id: u64,
    /// The [`crate::SandboxSpec`] as JSON (parsed by the child, as the wrapper parses it).
    pub spec_json: Vec<u8>,
    /// A [`crate::Verify`] pin in its text form.
    pub verify: Option<Vec<u8>>,
    /// The child's working directory.
    pub cwd: OsString,
    /// argv[0] as the program sees it, when not the program's path.
    pub arg0: Option<OsString>,
    /// The program (path, or a name looked up in the env's PATH without a pin) and its arguments.
    pub argv: Vec<OsString>,
    /// The child's whole environment, `KEY=VALUE` entries.
    pub env: Vec<OsString>,
}

/// A message to the spawner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// Fork and exec (with the child's stdio descriptors attached).
    Spawn(SpawnMsg),
    /// Kill a child and its process group, if the spawner has not reaped it yet.
    Kill {
        /// The child.
        pid: i32,
    },
}

/// A message from the spawner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The spawner is ready.
    Hello {
        /// [`PROTOCOL_VERSION`] of the spawner.
        version: u32,
        /// The spawner's own pid.
        pid: i32,
    },
    /// Request `id` was forked as `pid`.
    Spawned {
        /// The request.
        id: u64,
        /// The child.
        pid: i32,
    },
    /// Request `id` was not forked.
    Failed {
        /// The request.
        id: u64,
        /// Why.
        message: String,
    },
    /// `pid` was reaped with this wait status (as `waitpid` returns it).
    Exited {
        /// The child.
        pid: i32,
        /// Raw wait status.
        status: i32,
    },
}

/// A message that does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ProtoError {
    /// Shorter than its fields say.
    #[error("truncated message")]
    Truncated,
    /// Bytes left after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// Not a known message.
    #[error("unknown message tag {0:#04x}")]
    Tag(u8),
}

impl Request {
    /// The wire form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Spawn(m) => {
                w.u8(TAG_SPAWN);
                w.u64(m.id);
                w.bytes(&m.spec_json);
                w.opt(m.verify.as_deref());
                w.bytes(m.cwd.as_bytes());
                w.opt(m.arg0.as_ref().map(|a| a.as_bytes()));
                w.list(&m.argv);
                w.list(&m.env);
            }
            Self::Kill { pid } => {
                w.u8(TAG_KILL);
                w.i32(*pid);
            }
        }
        w.0
    }

    /// Parse one message.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader(buf);
        let m = match r.u8()? {
            TAG_SPAWN => Self::Spawn(SpawnMsg {
                id: r.u64()?,
                spec_json: r.bytes()?.to_vec(),
                verify: r.opt()?.map(<[u8]>::to_vec),
                cwd: os(r.bytes()?),
                arg0: r.opt()?.map(os),
                argv: r.list()?,
                env: r.list()?,
            }),
            TAG_KILL => Self::Kill { pid: r.i32()? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(m)
    }

    /// The id of a spawn request, even one whose later fields do not decode (to answer it).
    pub(crate) fn spawn_id(buf: &[u8]) -> Option<u64> {
        let mut r = Reader(buf);
        (r.u8().ok()? == TAG_SPAWN).then(|| r.u64().ok()).flatten()
    }
}

impl Reply {
    /// The wire form; a failure message is cut to keep within [`MAX_REPLY_BYTES`].
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Self::Hello { version, pid } => {
                w.u8(TAG_HELLO);
                w.u32(*version);
                w.i32(*pid);
            }
            Self::Spawned { id, pid } => {
                w.u8(TAG_SPAWNED);
                w.u64(*id);
                w.i32(*pid);
            }
            Self::Failed { id, message } => {
                w.u8(TAG_FAILED);
                w.u64(*id);
                let room = MAX_REPLY_BYTES - 16;
                let mut end = message.len().min(room);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                w.bytes(&message.as_bytes()[..end]);
            }
            Self::Exited { pid, status } => {
                w.u8(TAG_EXITED);
                w.i32(*pid);
                w.i32(*status);
            }
        }
        w.0
    }

    /// Parse one message.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader(buf);
        let m = match r.u8()? {
            TAG_HELLO => Self::Hello { version: r.u32()?, pid: r.i32()? },
            TAG_SPAWNED => Self::Spawned { id: r.u64()?, pid: r.i32()? },
            TAG_FAILED => Self::Failed { id: r.u64()?, message: String::from_utf8_lossy(r.bytes()?).into_owned() },
            TAG_EXITED => Self::Exited { pid: r.i32()?, status: r.i32()? },
            t => return Err(ProtoError::Tag(t)),
        };
        r.end()?;
        Ok(m)
    }
}

fn os(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Requests are capped far below 4 GiB before they are sent (MAX_REQUEST_BYTES).
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn opt(&mut self, b: Option<&[u8]>) {
        self.u8(u8::from(b.is_some()));
        if let Some(b) = b {
            self.bytes(b);
        }
    }
    fn list(&mut self, items: &[OsString]) {
        self.u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
        for i in items {
            self.bytes(i.as_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        self.array().map(u64::from_le_bytes)
    }
    fn i32(&mut self) -> Result<i32, ProtoError> {
        self.array().map(i32::from_le_bytes)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt(&mut self) -> Result<Option<&'a [u8]>, ProtoError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.bytes().map(Some),
        }
    }
    fn list(&mut self) -> Result<Vec<OsString>, ProtoError> {
        let n = self.u32()? as usize;
        // Every entry takes at least its 4-byte length: a count beyond that is a lie, and
        // must not size an allocation.
        if n > self.0.len() / 4 {
            return Err(ProtoError::Truncated);
        }
        (0..n).map(|_| self.bytes().map(os)).collect()
    }
    fn end(&self) -> Result<(), ProtoError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(ProtoError::Trailing(n)),
        }
    }
}

/// Send one message with `fds` attached (none for most messages). `MSG_NOSIGNAL`: a
/// closed peer is an error (EPIPE), not a SIGPIPE.
pub(crate) fn send(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>], flags: MsgFlags) -> nix::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let flags = flags | MsgFlags::MSG_NOSIGNAL;
    // A SOCK_SEQPACKET message is sent whole or not at all.
    sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(msg)], cmsgs, flags, None).map(drop)
}

/// Receive one message into `buf` with the descriptors sent along (close-on-exec, owned
/// here). `Ok(None)`: the peer closed the socket. A message longer than `buf` is an error
/// (EMSGSIZE), its descriptors closed.
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    // Room for more than a request carries, so that a surplus is received (and closed)
    // rather than truncated away.
    let mut space = nix::cmsg_space!([RawFd; 4 * STDIO_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags | MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    // Own every descriptor first, so that whatever is wrong with the message, none leaks.
    let cmsgs = msg.cmsgs();
    let whole = cmsgs.is_ok() && !msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
    for c in cmsgs.into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            fds.extend(raw.into_iter().map(own_received));
        }
    }
    if !whole {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fds)))
}

/// Take ownership of a descriptor the kernel just installed in this process for a
/// received `SCM_RIGHTS` message.
#[allow(unsafe_code)]
fn own_received(fd: RawFd) -> OwnedFd {
    // SAFETY: recvmsg installed `fd` into this process's table for this message only;
    // nothing else refers to it, so this OwnedFd is its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn spawn_msg() -> SpawnMsg {
        SpawnMsg {
            id: 7,
            spec_json: br#"{"task_dir":"/t"}"#.to_vec(),
            verify: Some(b"sha256:00".to_vec()),
            cwd: "/t".into(),
            arg0: Some(OsString::from_vec(b"n\xffame".to_vec())),
            argv: vec!["/bin/echo".into(), "".into(), OsString::from_vec(vec![0xfe, b'x'])],
            env: vec!["PATH=/usr/bin".into(), "HOME=/t".into()],
        }
    }

    #[test]
    fn messages_round_trip() {
        let requests = [
            Request::Spawn(spawn_msg()),
            Request::Spawn(SpawnMsg { verify: None, arg0: None, argv: vec![], env: vec![], ..spawn_msg() }),
            Request::Kill { pid: 42 },
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let replies = [
            Reply::Hello { version: PROTOCOL_VERSION, pid: 1 },
            Reply::Spawned { id: u64::MAX, pid: 9 },
            Reply::Failed { id: 3, message: "fork: EAGAIN ✓".into() },
            Reply::Exited { pid: 9, status: 0x0300 },
        ];
        for r in replies {
            assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = Request::Spawn(spawn_msg()).encode();
        for cut in [0, 1, 8, 9, 20, good.len() - 1] {
            assert_eq!(Request::decode(&good[..cut]), Err(ProtoError::Truncated), "cut at {cut}");
        }
        assert_eq!(Request::spawn_id(&good[..9]), Some(7));
        assert_eq!(Request::spawn_id(&Request::Kill { pid: 1 }.encode()), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(ProtoError::Trailing(1)));
        assert_eq!(Request::decode(b"Z"), Err(ProtoError::Tag(b'Z')));
        assert_eq!(Reply::decode(b"S"), Err(ProtoError::Tag(b'S')));
        // A list count no message could hold is refused before anything is allocated.
        let mut lying = vec![TAG_SPAWN];
        lying.extend_from_slice(&1u64.to_le_bytes());
        for _ in 0..2 {
            lying.extend_from_slice(&0u32.to_le_bytes());
        }
        lying.push(0);
        lying.extend_from_slice(&0u32.to_le_bytes());
        lying.push(0);
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&lying), Err(ProtoError::Truncated));
    }

    #[test]
    fn a_long_failure_message_is_cut_to_fit() {
        let r = Reply::Failed { id: 1, message: "é".repeat(MAX_REPLY_BYTES) };
        let wire = r.encode();
        assert!(wire.len() <= MAX_REPLY_BYTES);
        let Reply::Failed { message, .. } = Reply::decode(&wire).unwrap() else { panic!("not a failure") };
        assert!(message.chars().all(|c| c == 'é') && message.len() > MAX_REPLY_BYTES / 2);
    }

    #[test]
    fn a_request_carries_its_descriptors() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let msg = Request::Spawn(spawn_msg()).encode();
        send(a.as_fd(), &msg, &[devnull.as_fd(), w.as_fd(), w.as_fd()], MsgFlags::empty()).unwrap();
        drop(w);
        let mut buf = vec![0u8; MAX_REQUEST_BYTES];
        let (n, fds) = recv(b.as_fd(), &mut buf, MsgFlags::empty()).unwrap().unwrap();
        assert_eq!(Request::decode(&buf[..n]).unwrap(), Request::Spawn(spawn_msg()));
        assert_eq!(fds.len(), STDIO_FDS);
        for fd in &fds {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & nix::libc::FD_CLOEXEC, 0, "received descriptors are close-on-exec");
        }
        let mut fds = fds.into_iter();
        let _stdin = fds.next();
        std::fs::File::from(fds.next().unwrap()).write_all(b"through the passed pipe").unwrap();
        drop(fds);
        let mut got = String::new();
        std::fs::File::from(r).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the passed pipe");

        // Without descriptors, and then the peer's end of the stream.
        send(a.as_fd(), &Request::Kill { pid: 5 }.encode(), &[], MsgFlags::empty()).unwrap();
        let (n, fds) = recv(b.as_fd(), &mut buf, MsgFlags::empty()).unwrap().unwrap();
        assert_eq!((Request::decode(&buf[..n]).unwrap(), fds.len()), (Request::Kill { pid: 5 }, 0));
        drop(a);
        assert!(recv(b.as_fd(), &mut buf, MsgFlags::empty()).unwrap().is_none());
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_an_error() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        send(a.as_fd(), &[1u8; 64], &[], MsgFlags::empty()).unwrap();
        let mut small = [0u8; 16];
        assert_eq!(recv(b.as_fd(), &mut small, MsgFlags::empty()).unwrap_err(), nix::errno::Errno::EMSGSIZE);
    }
}
