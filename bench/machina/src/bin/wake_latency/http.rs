//! The benchmark's HTTP/1.1 client.

use super::*;

/// An HTTP/1.1 client: a fresh connection per request, or one kept alive (`--keep-alive`).
pub(super) struct Client {
    /// The API's loopback port.
    pub(super) port: u16,
    /// Reuse one connection instead of connecting for each request.
    pub(super) keep_alive: bool,
    /// The kept connection.
    pub(super) conn: Option<TcpStream>,
}

impl Client {
    /// A client of the API on `port`.
    pub(super) fn new(port: u16, keep_alive: bool) -> Self {
        Self { port, keep_alive, conn: None }
    }

    /// One request; returns the status and the body, complete.
    pub(super) fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        let mut s = match self.conn.take() {
            Some(s) => s,
            None => {
                let s = TcpStream::connect(("127.0.0.1", self.port))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s
            }
        };
        let close = if self.keep_alive { "" } else { "Connection: close\r\n" };
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
            self.port,
            body.len()
        );
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                bail!("connection closed before the response headers");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
        let closing = head.lines().any(|l| l.eq_ignore_ascii_case("connection: close"));
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
        });
        match length {
            Some(len) => {
                while buf.len() < head_end + len {
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        bail!("connection closed inside the response body");
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                if self.keep_alive && !closing {
                    self.conn = Some(s);
                }
            }
            None => {
                s.read_to_end(&mut buf)?;
            }
        }
        Ok((status, String::from_utf8_lossy(&buf[head_end..]).into_owned()))
    }
}

/// Wait until `GET /health` answers 200, failing early if a child died.
pub(super) fn wait_healthy(port: u16, deadline: Instant, guard: &ChildGuard) -> Result<()> {
    while Instant::now() < deadline {
        guard.check_alive()?;
        if Client::new(port, false).request("GET", "/health", "").is_ok_and(|(st, _)| st == 200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("machina-api did not become healthy")
}
