//! The external policy driver against real child processes under the real
//! machina-task-exec and landlock: `/bin/sh` scripts in a temporary allowed root.
//!
//! Needs the wrapper built first: `cargo build --bin machina-task-exec` (the workspace
//! command `cargo test --workspace --all-targets` builds it), or `MACHINA_TASK_EXEC` set
//! to it. The sandbox is required in these tests, so a kernel without landlock (ABI ≥ 4
//! for the TCP rule) fails them with the wrapper's message saying what is missing.

use machina_core::ErrCode;
use machina_core::config::DriverSettings;
use machina_planner::driver::{Driver, DriverError};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// machina-task-exec: `$MACHINA_TASK_EXEC`, else beside the directory of this test
/// binary (`target/<profile>/deps/..`).
fn wrapper() -> PathBuf {
    if let Some(p) = std::env::var_os("MACHINA_TASK_EXEC") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let w = profile_dir.join("machina-task-exec");
    assert!(
        w.is_file(),
        "{} not found: run `cargo build --bin machina-task-exec` first (or set MACHINA_TASK_EXEC)",
        w.display()
    );
    w
}

fn canonical(p: &str) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A temporary directory with an allowed root for scripts, a place outside it, and fresh
/// work directories.
struct Env {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    sh: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(tmp.path()).unwrap();
        let root = base.join("drivers");
        std::fs::create_dir(&root).unwrap();
        Self { _tmp: tmp, base, root, sh: canonical("/bin/sh") }
    }

    /// Write an executable script `name` into `dir`.
    fn script_in(&self, dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn script(&self, body: &str) -> PathBuf {
        self.script_in(&self.root, "drv.sh", body)
    }

    /// Settings running `script` with sh (and `extra` executables allowed).
    fn settings(&self, script: &Path, extra: &[&str]) -> DriverSettings {
        let mut allowed = vec![self.sh.clone()];
        allowed.extend(extra.iter().map(|p| canonical(p)));
        DriverSettings {
            command: vec![self.sh.to_str().unwrap().into(), script.to_str().unwrap().into()],
            allowed_executables: allowed,
            allowed_roots: vec![self.root.clone()],
            timeout_ms: 10_000,
            ..DriverSettings::default()
        }
    }

    fn driver(&self, s: &DriverSettings) -> Driver {
        Driver::new(s, Some(wrapper()), true).expect("driver builds").expect("a command is configured")
    }

    /// A fresh, empty work directory.
    fn work(&self, name: &str) -> PathBuf {
        let w = self.base.join(name);
        std::fs::create_dir(&w).unwrap();
        w
    }
}

fn input() -> serde_json::Value {
    json!({"intent": {"id": "intent-42", "inputs": {"words": ["a", "b"]}}, "recipe": {"name": "demo"}})
}

/// A shell snippet printing a one-task plan whose task name is `$name`.
const PRINT_PLAN: &str = r#"printf '{"recipe":"demo","concurrency":1,"tasks":[{"name":"%s","tool":"shell","argv":["/usr/bin/echo","hi"],"timeout_secs":5}]}\n' "$name"
"#;

/// Reads stdin's one line and names its task after the intent's id.
fn echoing_driver() -> String {
    format!("IFS= read -r input\nid=${{input#*\\\"id\\\":\\\"}}\nname=echo-${{id%%\\\"*}}\n{PRINT_PLAN}")
}

fn assert_code(e: &DriverError, kind: &str, code: ErrCode) {
    assert_eq!((e.kind(), e.err_code()), (kind, code), "{e}");
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The pids a driver wrote to `work/pids`, once each has ended (panics after 5 s).
async fn assert_all_ended(work: &Path) {
    let text = std::fs::read_to_string(work.join("pids")).expect("the driver wrote its pids");
    let pids: Vec<i32> = text.split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert!(pids.len() >= 2, "{text:?}");
    let give_up = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| ended(*p)) {
        assert!(
            Instant::now() < give_up,
            "still running: {:?}",
            pids.iter().filter(|p| !ended(**p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_good_driver_gets_its_input_on_stdin_and_returns_the_plan() {
    let env = Env::new();
    let d = env.driver(&env.settings(&env.script(&echoing_driver()), &[]));
    let plan = d.plan(&input(), &env.work("w")).await.unwrap();
    assert_eq!((plan.recipe.as_str(), plan.concurrency), ("demo", 1));
    assert_eq!(plan.tasks.len(), 1);
    assert_eq!(plan.tasks[0].name, "echo-intent-42", "the driver read the intent from stdin");
    assert_eq!(plan.tasks[0].argv, ["/usr/bin/echo", "hi"]);
}

#[tokio::test]
async fn a_driver_ignoring_a_large_input_still_answers() {
    let env = Env::new();
    let d = env.driver(&env.settings(&env.script(&format!("name=ignored\n{PRINT_PLAN}")), &[]));
    let big = json!({"intent": {"blob": "x".repeat(1 << 20)}, "recipe": {}});
    assert_eq!(d.plan(&big, &env.work("w")).await.unwrap().tasks[0].name, "ignored");
}

#[tokio::test]
async fn a_driver_that_times_out_fails_and_its_whole_group_dies() {
    let env = Env::new();
    let body = "echo $$ > pids\n/usr/bin/sleep 30 &\necho $! >> pids\n/usr/bin/sleep 30\n";
    let s = DriverSettings { timeout_ms: 500, ..env.settings(&env.script(body), &["/usr/bin/sleep"]) };
    let work = env.work("w");
    let started = Instant::now();
    let e = env.driver(&s).plan(&input(), &work).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "returned after {:?}", started.elapsed());
    assert_code(&e, "driver_timeout", ErrCode::DriverFail);
    assert!(e.to_string().ends_with("timed out after 500 ms; its process group was killed"), "{e}");
    assert!(e.to_string().contains(env.root.join("drv.sh").to_str().unwrap()), "names the script: {e}");
    assert_all_ended(&work).await;
}

#[tokio::test]
async fn dropping_the_run_kills_the_driver_too() {
    let env = Env::new();
    let body = "echo $$ > pids\n/usr/bin/sleep 30 &\necho $! >> pids\n/usr/bin/sleep 30\n";
    let d = env.driver(&env.settings(&env.script(body), &["/usr/bin/sleep"]));
    let work = env.work("w");
    let input = input();
    let run = d.plan(&input, &work);
    let cut = tokio::time::timeout(Duration::from_millis(500), run).await;
    assert!(cut.is_err(), "the driver sleeps 30 s");
    assert_all_ended(&work).await;
}

#[tokio::test]
async fn a_process_leaving_the_group_with_stdout_cannot_hold_the_step() {
    let env = Env::new();
    let setsid = "/usr/bin/setsid";
    if !Path::new(setsid).exists() {
        panic!("{setsid} is needed by this test (util-linux)");
    }
    // The escaped process says when it has left the group, so the driver's exit cannot
    // kill it before it does.
    let sh = env.sh.display();
    let body = format!(
        "{setsid} {sh} -c 'echo > escaped; exec /usr/bin/sleep 2' &\n\
         while [ ! -e escaped ]; do :; done\nname=x\n{PRINT_PLAN}"
    );
    let s = DriverSettings { timeout_ms: 700, ..env.settings(&env.script(&body), &[setsid, "/usr/bin/sleep"]) };
    let started = Instant::now();
    let e = env.driver(&s).plan(&input(), &env.work("w")).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1900), "held for {:?}", started.elapsed());
    assert_code(&e, "driver_timeout", ErrCode::DriverFail);
    assert!(
        e.to_string().contains("exited, but a process it started outside its process group kept stdout open"),
        "{e}"
    );
}

#[tokio::test]
async fn output_over_the_cap_fails_and_kills_the_driver() {
    let env = Env::new();
    let body = "echo $$ > pids\n/usr/bin/sleep 30 &\necho $! >> pids\nwhile :; do printf '%s' 0123456789abcdef0123456789abcdef; done\n";
    let s = DriverSettings { stdout_cap_bytes: 4096, ..env.settings(&env.script(body), &["/usr/bin/sleep"]) };
    let work = env.work("w");
    let e = env.driver(&s).plan(&input(), &work).await.unwrap_err();
    assert_code(&e, "driver_output_cap", ErrCode::DriverFail);
    let m = e.to_string();
    assert!(
        m.contains(
            "printed more than 4096 bytes on stdout, over driver.stdout_cap_bytes = 4096; its process group was killed"
        ),
        "{m}"
    );
    assert_all_ended(&work).await;
}

#[tokio::test]
async fn a_non_zero_exit_fails_with_the_tail_of_stderr() {
    let env = Env::new();
    let body = "echo 'warming up' >&2\necho 'cannot plan: the budget is spent' >&2\nexit 3\n";
    let e = env.driver(&env.settings(&env.script(body), &[])).plan(&input(), &env.work("w")).await.unwrap_err();
    assert_code(&e, "driver_exit", ErrCode::DriverFail);
    let DriverError::Exit { status, stderr_tail, .. } = &e else { unreachable!() };
    assert_eq!(status.code(), Some(3));
    assert_eq!(stderr_tail, "warming up\ncannot plan: the budget is spent");
    assert!(e.to_string().contains("drv.sh exited 3: warming up\ncannot plan: the budget is spent"), "{e}");
}

#[tokio::test]
async fn invalid_json_is_plan_invalid() {
    let env = Env::new();
    let body = "printf '{\"recipe\": oops}'\n";
    let e = env.driver(&env.settings(&env.script(body), &[])).plan(&input(), &env.work("w")).await.unwrap_err();
    assert_code(&e, "driver_invalid_json", ErrCode::PlanInvalid);
    assert!(e.to_string().contains("printed invalid JSON at line 1 column 12: expected value"), "{e}");
}

#[tokio::test]
async fn json_that_is_not_a_plan_is_plan_invalid() {
    let env = Env::new();
    let body = r#"printf '{"recipe":"demo","concurrency":1,"tasks":[],"shell_string":"rm -rf /"}'"#;
    let e = env.driver(&env.settings(&env.script(body), &[])).plan(&input(), &env.work("w")).await.unwrap_err();
    assert_code(&e, "driver_invalid_plan", ErrCode::PlanInvalid);
    assert!(e.to_string().contains("printed JSON that is not a plan: unknown field `shell_string`"), "{e}");
}

#[test]
fn executables_off_the_allowlist_are_refused_at_construction() {
    let env = Env::new();
    let script = env.script("exit 0\n");
    for argv0 in [canonical("/usr/bin/env"), PathBuf::from("sh")] {
        let s = DriverSettings {
            command: vec![argv0.to_str().unwrap().into(), script.to_str().unwrap().into()],
            ..env.settings(&script, &[])
        };
        let e = Driver::new(&s, Some(wrapper()), true).unwrap_err();
        if argv0.is_absolute() {
            assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
            assert!(e.to_string().contains("is not in driver.allowed_executables"), "{e}");
        } else {
            // A relative command[0] is already a configuration error.
            assert_code(&e, "driver_config", ErrCode::DriverFail);
        }
    }
}

#[test]
fn scripts_outside_the_roots_are_refused_even_through_a_symlink() {
    let env = Env::new();
    let outside = env.script_in(&env.base, "outside.sh", &format!("name=escaped\n{PRINT_PLAN}"));
    let e = Driver::new(&env.settings(&outside, &[]), Some(wrapper()), true).unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
    assert!(e.to_string().contains("outside driver.allowed_roots"), "{e}");
    let link = env.root.join("innocent.sh");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let e = Driver::new(&env.settings(&link, &[]), Some(wrapper()), true).unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
    assert!(e.to_string().contains(&format!("resolves to {}", outside.display())), "{e}");
}

#[tokio::test]
async fn a_symlink_repointed_after_loading_is_refused_before_running() {
    let env = Env::new();
    let good = env.script(&format!("name=good\n{PRINT_PLAN}"));
    let outside = env.script_in(&env.base, "outside.sh", "echo ran > ran\nexit 0\n");
    let link = env.root.join("current.sh");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let d = env.driver(&env.settings(&link, &[]));
    assert_eq!(d.plan(&input(), &env.work("w1")).await.unwrap().tasks[0].name, "good");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let work = env.work("w2");
    let e = d.plan(&input(), &work).await.unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
    assert!(e.to_string().contains(&format!("resolves to {}, outside driver.allowed_roots", outside.display())), "{e}");
    assert!(!work.join("ran").exists(), "nothing ran");
}

#[tokio::test]
async fn an_executable_replaced_after_loading_is_refused_by_the_wrapper() {
    let env = Env::new();
    let bin = env.base.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let mysh = bin.join("mysh");
    std::fs::copy(&env.sh, &mysh).unwrap();
    let script = env.script(&format!("name=original\n{PRINT_PLAN}"));
    let mut s = env.settings(&script, &[]);
    s.command[0] = mysh.to_str().unwrap().into();
    s.allowed_executables = vec![mysh.clone()];
    let d = env.driver(&s);
    assert_eq!(d.plan(&input(), &env.work("w1")).await.unwrap().tasks[0].name, "original", "control");
    let swap = bin.join("swap");
    std::fs::copy(canonical("/usr/bin/bash"), &swap).unwrap();
    std::fs::rename(&swap, &mysh).unwrap();
    let e = d.plan(&input(), &env.work("w2")).await.unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
    assert!(
        e.to_string().contains("refused by machina-task-exec") && e.to_string().contains("not the pinned file"),
        "{e}"
    );

    // Unconfined (no wrapper), the same replacement is caught before the spawn.
    std::fs::copy(&env.sh, &swap).unwrap();
    std::fs::rename(&swap, &mysh).unwrap();
    let d = Driver::new(&s, None, false).unwrap().unwrap();
    assert_eq!(d.plan(&input(), &env.work("w3")).await.unwrap().tasks[0].name, "original", "unconfined control");
    std::fs::copy(canonical("/usr/bin/bash"), &swap).unwrap();
    std::fs::rename(&swap, &mysh).unwrap();
    let e = d.plan(&input(), &env.work("w4")).await.unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
    assert!(e.to_string().contains("was replaced or modified after the driver was loaded"), "{e}");
}

#[tokio::test]
async fn a_script_rewritten_after_loading_is_refused() {
    let env = Env::new();
    let script = env.script(&format!("name=v1\n{PRINT_PLAN}"));
    let d = env.driver(&env.settings(&script, &[]));
    std::fs::write(&script, format!("#!/bin/sh\nname=version-two\n{PRINT_PLAN}")).unwrap();
    let e = d.plan(&input(), &env.work("w")).await.unwrap_err();
    assert_code(&e, "driver_refused", ErrCode::PolicyDenied);
}

#[tokio::test]
async fn the_driver_writes_only_its_work_dir_and_executes_only_what_is_allowed() {
    let env = Env::new();
    let outside_dir = env.work("outside");
    let body = format!(
        "IFS= read -r input\n\
         r=denied; (printf x > '{root}/evil') 2>/dev/null && r=wrote\n\
         o=denied; (printf x > '{outside}/evil') 2>/dev/null && o=wrote\n\
         w=denied; (printf x > ./mine) 2>/dev/null && w=wrote\n\
         x=denied; /usr/bin/id >/dev/null 2>&1 && x=ran\n\
         name=$r-$o-$w-$x\n{PRINT_PLAN}",
        root = env.root.display(),
        outside = outside_dir.display()
    );
    let work = env.work("w");
    let plan = env.driver(&env.settings(&env.script(&body), &[])).plan(&input(), &work).await.unwrap();
    assert_eq!(plan.tasks[0].name, "denied-denied-wrote-denied", "root-outside-workdir-exec");
    assert!(!env.root.join("evil").exists() && !outside_dir.join("evil").exists());
    assert_eq!(std::fs::read(work.join("mine")).unwrap(), b"x");
}

#[tokio::test]
async fn the_driver_has_no_tcp() {
    let env = Env::new();
    let bash = canonical("/usr/bin/bash");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let body =
        format!("n=refused\n(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && n=connected\nname=$n\n{PRINT_PLAN}");
    let script = env.script(&body);
    let mut s = env.settings(&script, &[]);
    s.command[0] = bash.to_str().unwrap().into();
    s.allowed_executables = vec![bash];
    let plan = env.driver(&s).plan(&input(), &env.work("w1")).await.unwrap();
    assert_eq!(plan.tasks[0].name, "refused");
    assert_eq!(listener.accept().unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "nothing connected");

    // Control: unconfined, the same script does connect, so the check above can fail.
    let unconfined = Driver::new(&s, None, false).unwrap().unwrap();
    let plan = unconfined.plan(&input(), &env.work("w2")).await.unwrap();
    assert_eq!(plan.tasks[0].name, "connected");
    assert!(listener.accept().is_ok());
}

#[tokio::test]
async fn the_drivers_cpu_limit_applies() {
    let env = Env::new();
    let s = DriverSettings { cpu_secs: Some(1), ..env.settings(&env.script("while :; do :; done\n"), &[]) };
    let e = env.driver(&s).plan(&input(), &env.work("w")).await.unwrap_err();
    assert_code(&e, "driver_exit", ErrCode::DriverFail);
    let DriverError::Exit { status, .. } = &e else { unreachable!() };
    assert!(status.code().is_none(), "killed by a signal (SIGXCPU at RLIMIT_CPU), not timed out: {e}");
    assert!(e.to_string().contains("was killed by signal"), "{e}");
}
