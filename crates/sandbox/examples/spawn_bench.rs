//! Spawns per second of `/bin/true` run through `machina-task-exec` (new session, rlimits,
//! capability drop, no_new_privs, landlock) against a raw spawn of `/bin/true`.
//!
//! `cargo build --release --bin machina-task-exec && cargo run --release -p machina-sandbox --example spawn_bench`
//! (`MACHINA_TASK_EXEC` picks another wrapper; without one, this example acts as the wrapper.)

use machina_sandbox::SandboxSpec;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const N: u32 = 2000;
/// Set in the environment of this example when it runs as its own wrapper.
const AS_WRAPPER: &str = "MACHINA_SPAWN_BENCH_AS_WRAPPER";

fn main() -> ExitCode {
    if std::env::var_os(AS_WRAPPER).is_some() {
        return machina_sandbox::exec_main();
    }
    let (wrapper, note) = wrapper();
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = serde_json::to_string(&SandboxSpec::new(dir.path())).expect("spec");
    let raw = rate(|| Command::new("/bin/true"));
    let sandboxed = rate(|| {
        let mut c = Command::new(&wrapper);
        c.args(["--spec-json", &spec, "--", "/bin/true"]).current_dir(dir.path()).env(AS_WRAPPER, "1");
        c
    });
    println!("wrapper: {} {note}", wrapper.display());
    println!("| spawn of /bin/true (N={N}) | spawns/s | µs/spawn |");
    println!("|---|---:|---:|");
    println!("| raw (std Command) | {raw:.0} | {:.0} |", 1e6 / raw);
    println!("| sandboxed (machina-task-exec) | {sandboxed:.0} | {:.0} |", 1e6 / sandboxed);
    println!("\nsandboxed/raw: {:.0}% (target ≥ 60%)", 100.0 * sandboxed / raw);
    ExitCode::SUCCESS
}

/// Spawns per second, each awaited; fails loudly if one does not succeed.
fn rate(make: impl Fn() -> Command) -> f64 {
    let start = Instant::now();
    for _ in 0..N {
        let status = make().stdin(Stdio::null()).stdout(Stdio::null()).status().expect("spawn");
        assert!(status.success(), "a spawn failed: {status}");
    }
    f64::from(N) / start.elapsed().as_secs_f64()
}

/// `$MACHINA_TASK_EXEC`, else `target/<profile>/machina-task-exec`, else this example itself.
fn wrapper() -> (PathBuf, &'static str) {
    if let Some(p) = std::env::var_os("MACHINA_TASK_EXEC") {
        return (p.into(), "(MACHINA_TASK_EXEC)");
    }
    let me = std::env::current_exe().expect("current exe");
    if let Some(p) = me.parent().and_then(|d| d.parent()).map(|d| d.join("machina-task-exec")).filter(|p| p.is_file()) {
        return (p, "");
    }
    (me, "(this example acting as the wrapper: machina-task-exec is not built)")
}
