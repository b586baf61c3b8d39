//! Listening sockets: the ones systemd hands over (socket activation, any
//! number, TCP and unix stream told apart by their address family), else one
//! TCP listener bound from `api.listen`.

use anyhow::{Context, bail};
use std::fmt;

/// A socket the API accepts on.
pub enum Listener {
    /// TCP (e.g. 127.0.0.1:8080).
    Tcp(tokio::net::TcpListener),
    /// A unix stream socket (e.g. /run/machina/api.sock).
    Unix(tokio::net::UnixListener),
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(l) => match l.local_addr() {
                Ok(a) => write!(f, "{a}"),
                Err(_) => f.write_str("tcp"),
            },
            Self::Unix(l) => match l.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string())) {
                Some(p) => f.write_str(&p),
                None => f.write_str("unix"),
            },
        }
    }
}

/// The listeners systemd passed (LISTEN_FDS for this process), or an empty list.
pub fn from_systemd() -> anyhow::Result<Vec<Listener>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut out = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        if let Ok(Some(l)) = fds.take_tcp_listener(i) {
            l.set_nonblocking(true)?;
            out.push(Listener::Tcp(tokio::net::TcpListener::from_std(l)?));
        } else if let Ok(Some(l)) = fds.take_unix_listener(i) {
            l.set_nonblocking(true)?;
            out.push(Listener::Unix(tokio::net::UnixListener::from_std(l)?));
        } else {
            bail!("socket {} passed by systemd (fd {}) is neither a TCP nor a unix stream listener", i, 3 + i);
        }
    }
    Ok(out)
}

/// Systemd's listeners, else a TCP listener on `addr`.
pub async fn open(addr: &str) -> anyhow::Result<Vec<Listener>> {
    let passed = from_systemd()?;
    if !passed.is_empty() {
        return Ok(passed);
    }
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    Ok(vec![Listener::Tcp(l)])
}
