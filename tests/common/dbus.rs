//! A private dbus-daemon on a unix socket in a temp dir, configured like a system
//! bus that admits everyone (authorization is then machina's own check).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

pub struct PrivateBus {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
}

/// The policy of [`PrivateBus::start`]: everyone may do everything.
const OPEN_POLICY: &str = r#"<policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>"#;

impl PrivateBus {
    /// A bus that admits everyone to everything.
    pub fn start() -> Self {
        Self::with_policy(OPEN_POLICY)
    }

    /// A bus with these `<policy>`/`<include>` elements as its whole policy.
    pub fn with_policy(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Other users (the unprivileged caller in the tests) must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("bus");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  {policy}
</busconfig>"#,
            socket.display()
        );
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, config).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon (package dbus) must be installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("unix:"), "dbus-daemon printed {line:?}");
        Self { dir, address: line.trim().to_string(), child }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
