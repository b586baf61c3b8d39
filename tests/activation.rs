//! Socket activation and the idle exit: machina-api takes the listeners systemd passes
//! (here systemd-socket-activate, which sets LISTEN_FDS as systemd does), serves TCP and
//! the unix socket, and exits 0 once idle for `api.idle_exit_secs`.

mod common;

use common::{Machina, TOKEN};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn unix_get(path: &std::path::Path, uri: &str) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    write!(s, "GET {uri} HTTP/1.1\r\nHost: machina\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn passed_sockets_are_served_and_the_api_exits_when_idle() {
    let m = Machina::new("[worker]\npoll_ms = 100\n");
    // Rewrite the config with a one-second idle exit (the harness default never exits).
    let conf = m.dir.path().join("config.d/60-idle.toml");
    std::fs::write(&conf, "[api]\nidle_exit_secs = 1\n").unwrap();
    let sock = m.dir.path().join("api.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{}", m.port))
        .arg("-l")
        .arg(&sock)
        .arg("--fdname=machina-api")
        .arg("-E")
        .arg("MACHINA_LOG=warn")
        .arg(env!("CARGO_BIN_EXE_machina-api"))
        .arg("--config-dir")
        .arg(m.dir.path().join("config.d"))
        .arg("--state-dir")
        .arg(&m.state)
        .env_remove("STATE_DIRECTORY")
        .stdout(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (package systemd) must be installed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(sock.exists() && std::net::TcpStream::connect(("127.0.0.1", m.port)).is_ok()) {
        assert!(Instant::now() < deadline, "sockets never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (st, health) = m.get("/health");
    assert_eq!(st, 200, "{health}");
    let over_unix = unix_get(&sock, "/runs?limit=1");
    assert!(over_unix.starts_with("HTTP/1.1 200"), "{over_unix}");
    let unauthenticated = {
        let mut s = UnixStream::connect(&sock).unwrap();
        write!(s, "GET /runs HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(unauthenticated.starts_with("HTTP/1.1 401"), "the unix socket needs the token too: {unauthenticated}");
    // Idle for a second: the process exits on its own, successfully.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("machina-api did not exit when idle");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "idle exit must be status 0, got {status}");
}
