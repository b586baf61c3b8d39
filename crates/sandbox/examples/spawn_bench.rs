//! Spawns per second of `/bin/true`, each awaited with its exit status: raw (std's
//! `Command`, posix_spawn), through the `machina-task-exec` wrapper (posix_spawn of the
//! wrapper, which confines itself and execs /bin/true), and through the spawner
//! (`machina-task-exec --serve` forks, the child confines itself and execs /bin/true) via
//! the async client the worker uses. Both sandboxed rows apply the same default spec:
//! new session, rlimits, capability drop, no_new_privs, landlock.
//!
//! `cargo build --release --bin machina-task-exec && cargo run --release -p machina-sandbox --example spawn_bench`
//! (`MACHINA_TASK_EXEC` picks another wrapper; without one, this example acts as the
//! wrapper and as the spawner itself.) Target: spawner/raw ≥ 60%.

use machina_sandbox::{SandboxSpec, SpawnRequest, Spawner};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

const N: u32 = 2000;
/// Set in the environment of this example when it runs as its own wrapper.
const AS_WRAPPER: &str = "MACHINA_SPAWN_BENCH_AS_WRAPPER";

fn main() -> ExitCode {
    // As its own spawner, this process must stay single-threaded: decide before anything.
    if std::env::var_os(AS_WRAPPER).is_some() || std::env::args_os().nth(1).is_some_and(|a| a == "--serve") {
        return machina_sandbox::exec_main();
    }
    let (wrapper, note) = wrapper();
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = SandboxSpec::new(dir.path());
    let spec_json = serde_json::to_string(&spec).expect("spec");
    let raw = rate(|| Command::new("/bin/true"));
    let wrapped = rate(|| {
        let mut c = Command::new(&wrapper);
        c.args(["--spec-json", &spec_json, "--", "/bin/true"]).current_dir(dir.path()).env(AS_WRAPPER, "1");
        c
    });
    // On a worker thread of a multi-threaded runtime, as the worker's tasks run.
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let spawned = rt.block_on(rt.spawn(spawner_rate(wrapper.clone(), spec))).expect("spawner row");
    println!("wrapper: {} {note}", wrapper.display());
    println!("| spawn of /bin/true (N={N}) | spawns/s | µs/spawn | of raw |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [
        ("raw (std Command, posix_spawn)", raw),
        ("wrapper (posix_spawn machina-task-exec, exec)", wrapped),
        ("spawner (machina-task-exec --serve, fork)", spawned),
    ] {
        println!("| {name} | {r:.0} | {:.0} | {:.0}% |", 1e6 / r, 100.0 * r / raw);
    }
    println!(
        "\nsandboxed/raw: spawner {:.0}%, wrapper {:.0}% (target ≥ 60%)",
        100.0 * spawned / raw,
        100.0 * wrapped / raw
    );
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

/// Spawns per second through the spawner's client, each awaited with its exit status.
async fn spawner_rate(wrapper: PathBuf, spec: SandboxSpec) -> f64 {
    let sp = Spawner::start(&wrapper).await.expect("start the spawner (a machina-task-exec with --serve?)");
    let start = Instant::now();
    for _ in 0..N {
        let mut req = SpawnRequest::new(spec.clone(), "/bin/true");
        req.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
        let mut child = sp.spawn(req).await.expect("spawn");
        let status = child.wait().await.expect("exit status");
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
