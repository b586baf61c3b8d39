//! The OS files under packaging/ against the code: every MESSAGE_ID the daemons log has a
//! catalog entry, and the D-Bus policy file does on a real dbus-daemon what it promises.

mod common;

use machina_core::log::ALL_MESSAGE_IDS;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn every_message_id_has_a_catalog_entry() {
    let catalog = std::fs::read_to_string(Path::new(ROOT).join("packaging/catalog/machina.catalog")).unwrap();
    for (what, id) in ALL_MESSAGE_IDS {
        let header = format!("-- {id}\n");
        let at = catalog.find(&header).unwrap_or_else(|| panic!("no catalog entry for {what} ({id})"));
        let entry = &catalog[at + header.len()..];
        let entry = &entry[..entry.find("\n-- ").unwrap_or(entry.len())];
        assert!(entry.contains("Subject: ") && entry.contains("Defined-By: machina"), "{what}: {entry}");
    }
}

/// A bus configured like the system bus (deny by default) plus machina's policy file, with
/// one test-only rule letting root own the name (the package gives it to user machina).
fn policy_bus() -> common::dbus::PrivateBus {
    let policy = Path::new(ROOT).join("packaging/dbus-1/system.d/org.machina.Manager1.conf");
    common::dbus::PrivateBus::with_policy(&format!(
        r#"<policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{}</include>
  <policy user="root"><allow own="org.machina.Manager1"/></policy>"#,
        policy.display()
    ))
}

fn busctl(address: &str, uid: Option<u32>, args: &[&str]) -> std::process::Output {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={u}"), format!("--regid={u}"), "--clear-groups".into(), "busctl".into()]);
            c
        }
        None => Command::new("busctl"),
    };
    cmd.arg(format!("--address={address}")).args(args).output().unwrap()
}

#[test]
fn the_bus_policy_admits_readers_and_refuses_method_calls() {
    assert!(nix::unistd::geteuid().is_root(), "this test switches to uid 65534 and needs root (CI runs as root)");
    let bus = policy_bus();
    let address = bus.address.clone();
    let mut m = common::Machina::new(&format!("[bus]\naddress = \"{address}\"\n"));
    m.start_api();
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = ["org.machina.Manager1", "/org/machina/Manager1", "org.machina.Manager1"];
    while !busctl(&address, None, &["status", "org.machina.Manager1"]).status.success() {
        assert!(Instant::now() < deadline, "machina-api never owned its name");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Anyone: introspect and read properties.
    let intro = busctl(&address, Some(65534), &["introspect", target[0], target[1]]);
    assert!(intro.status.success(), "{}", String::from_utf8_lossy(&intro.stderr));
    assert!(String::from_utf8_lossy(&intro.stdout).contains(".ApprovePlan"));
    let version = busctl(&address, Some(65534), &["get-property", target[0], target[1], target[2], "Version"]);
    assert!(version.status.success(), "{}", String::from_utf8_lossy(&version.stderr));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    // Not anyone: methods are refused by the bus itself, before machina sees them.
    let call = busctl(&address, Some(65534), &["call", target[0], target[1], target[2], "ListRuns", "su", "", "5"]);
    assert!(!call.status.success());
    let err = String::from_utf8_lossy(&call.stderr);
    assert!(err.contains("Access denied") || err.contains("Rejected send"), "{err}");
    // machinactl reports the bus's own refusal as "permission denied" (exit 5), not as an outage.
    let ctl = common::machinactl(&address, Some(65534), &["lease", "issue", "--tool", "http", "--tier", "2"]);
    assert_eq!(ctl.status.code(), Some(5), "{}", String::from_utf8_lossy(&ctl.stderr));
    // Not anyone: owning the name.
    let own = busctl(
        &address,
        Some(65534),
        &[
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            "su",
            "org.machina.Manager1",
            "4",
        ],
    );
    assert!(!own.status.success(), "nobody must not own the name: {}", String::from_utf8_lossy(&own.stdout));
    // Root: methods pass the policy (and machina's own check).
    let root = busctl(&address, None, &["call", target[0], target[1], target[2], "ListRuns", "su", "", "5"]);
    assert!(root.status.success(), "{}", String::from_utf8_lossy(&root.stderr));
    drop(m);
}
