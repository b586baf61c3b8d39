//! Attack suite for plugins: real manifests loaded by machina-tools, real plugin
//! executables (`#!` scripts and copies of system ELFs) run by the worker through the real
//! `machina-task-exec` under real landlock, each attack trying to get past the pin, the
//! capability mask or the sandbox its capabilities map to. Every attack must fail; controls
//! show the same plugin does the thing when its capability is granted, so "blocked" is not
//! a broken plugin. Every attack runs twice: with plugins started through the exec
//! wrapper, and through the wrapper's spawner (`--serve`, the worker's default). Prints
//! `attack-suite plugins: N tried, N blocked` and `attack-suite plugins-spawner: …`.

mod common;

use common::tally::Tally;

use machina_core::ErrCode;
use machina_core::config::{SandboxSettings, ShellSettings};
use machina_sandbox::{dynamic_loaders, preflight};
use machina_tools::plugin::{CapSet, Plugin, PluginCatalog, PluginPolicy, file_sha256, load};
use machina_worker::plugin::run;
use machina_worker::shell::{RunLimits, ShellOutcome, ShellPolicy};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TASK_EXEC: &str = env!("CARGO_BIN_EXE_machina-task-exec");
/// Address space of a plugin without MEMORY in this suite, and with it.
const NORMAL_AS_BYTES: u64 = 128 << 20;
const PLUGIN_MEMORY_BYTES: u64 = 1 << 30;
const SECRET: &str = "plugin-secret-9d2e";

struct Fixture {
    _root: tempfile::TempDir,
    root: PathBuf,
    /// Plugin executables (outside every default sandbox root).
    bin: PathBuf,
    /// A directory only FILE_READ with a matching read_paths may read.
    data: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let (bin, data) = (root.join("bin"), root.join("data"));
        std::fs::create_dir(&bin).unwrap();
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("secret"), SECRET).unwrap();
        Self { _root: tmp, root, bin, data }
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        self.executable(name, format!("#!/bin/sh\n{body}\n").as_bytes())
    }

    fn copy_of(&self, name: &str, system: &str) -> PathBuf {
        self.executable(name, &std::fs::read(system).unwrap())
    }

    fn executable(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.bin.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A manifest directory of its own holding `manifest` as `file`.
    fn manifest_dir(&self, file: &str, manifest: &str) -> PathBuf {
        let dir = self.root.join("plugins.d").join(file);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(file), manifest).unwrap();
        dir
    }

    /// The manifest text for `path` pinned as it is now.
    fn manifest(&self, name: &str, path: &Path, caps: Option<&[&str]>, extra: &str) -> String {
        let sha = hex(&file_sha256(path).unwrap());
        let caps = caps.map(|c| format!("capabilities = {c:?}\n")).unwrap_or_default();
        format!("name = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha}\"\n{caps}{extra}\n", path.display())
    }

    fn load(&self, file: &str, manifest: &str, allowed: CapSet, allow_undeclared: bool) -> PluginCatalog {
        load(&PluginPolicy { dir: self.manifest_dir(file, manifest), allowed, allow_undeclared })
    }

    /// Load `path` as plugin `name` with `caps` under a mask allowing everything.
    fn plugin(&self, name: &str, path: &Path, caps: &[&str], extra: &str) -> Plugin {
        let m = self.manifest(name, path, Some(caps), extra);
        let c = self.load(&format!("{name}.toml"), &m, CapSet::all(), false);
        c.get(name).cloned().unwrap_or_else(|| panic!("control: {name} must load: {:?}", c.refused()))
    }

    /// A fresh task directory.
    fn task(&self, name: &str) -> PathBuf {
        let t = self.root.join("tasks").join(name);
        std::fs::create_dir_all(&t).unwrap();
        t
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// How plugins are started: through the exec wrapper, or through its spawner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Wrapper,
    Spawner,
}

fn shell(via: Via) -> ShellPolicy {
    let sandbox = SandboxSettings { address_space_bytes: NORMAL_AS_BYTES, ..SandboxSettings::default() };
    ShellPolicy::new(&ShellSettings { allow: vec![], env_allow: vec![] })
        .with_sandbox(&sandbox)
        .with_wrapper(Some(TASK_EXEC.into()))
        .with_spawner(via == Via::Spawner)
        .with_plugin_memory_bytes(PLUGIN_MEMORY_BYTES)
}

async fn exec(via: Via, p: &Plugin, args: &[&str], dir: &Path) -> ShellOutcome {
    let shell = shell(via);
    let o = exec_with(&shell, p, args, dir).await;
    // A spawner that failed to start would silently fall back to the wrapper.
    assert_eq!(shell.spawner_pid().await.is_some(), via == Via::Spawner, "plugins must run via the {via:?}");
    o
}

async fn exec_with(shell: &ShellPolicy, p: &Plugin, args: &[&str], dir: &Path) -> ShellOutcome {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let limits = RunLimits { timeout: Duration::from_secs(20), output_cap: 64 << 10 };
    run(shell, p, &args, dir, &[], &limits, Default::default()).await
}

fn show(o: &ShellOutcome) -> String {
    format!(
        "{:?} exit {:?}, stdout {:?}, stderr {:?}",
        o.err_code,
        o.exit_status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn out(o: &ShellOutcome) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn controls_good_plugins_run() {
    for via in [Via::Wrapper, Via::Spawner] {
        controls(via).await;
    }
}

async fn controls(via: Via) {
    let f = Fixture::new();
    let script = f.script("hello", "echo \"hello $1 from $(pwd)\"");
    let p = f.plugin("hello", &script, &[], "");
    let task = f.task("hello");
    let o = exec(via, &p, &["world"], &task).await;
    assert_eq!(o.err_code, None, "{}", show(&o));
    assert_eq!(out(&o), format!("hello world from {}\n", task.display()));
    let elf = f.copy_of("printenv", "/usr/bin/env");
    let p = f.plugin("printenv", &elf, &[], "");
    let o = exec(via, &p, &["GREETING=hi"], &task).await;
    assert!(o.err_code.is_none() && out(&o).contains("GREETING=hi"), "{}", show(&o));
    // Undeclared capabilities are accepted when explicitly allowed (and the mask has all).
    let m = f.manifest("undeclared", &script, None, "");
    let c = f.load("undeclared.toml", &m, CapSet::all(), true);
    assert_eq!(c.get("undeclared").map(|p| p.caps), Some(CapSet::all()), "{:?}", c.refused());
}

#[tokio::test]
async fn attack_suite() {
    suite(Via::Wrapper, "plugins").await;
}

#[tokio::test]
async fn attack_suite_spawner() {
    suite(Via::Spawner, "plugins-spawner").await;
}

async fn suite(via: Via, name: &str) {
    let f = Fixture::new();
    println!("preflight: {}", preflight());
    let mut t = Tally::default();
    load_attacks(&f, &mut t);
    swap_attacks(&f, via, &mut t).await;
    network_attack(&f, via, &mut t).await;
    file_attacks(&f, via, &mut t).await;
    shell_attacks(&f, via, &mut t).await;
    memory_attack(&f, via, &mut t).await;
    let script = f.script("unwrapped", "echo RAN");
    let p = f.plugin("unwrapped", &script, &[], "");
    let o = exec_with(&shell(via).with_wrapper(None), &p, &[], &f.task("unwrapped")).await;
    t.attack(
        "run a plugin without the sandboxing wrapper",
        o.err_code == Some(ErrCode::BootFail) && o.stdout.is_empty(),
        show(&o),
    );
    t.finish(name);
}

fn refused_as(c: &PluginCatalog, name: &str, kind: &str) -> bool {
    c.get(name).is_none() && c.refused().iter().any(|r| r.reason.kind() == kind)
}

fn load_attacks(f: &Fixture, t: &mut Tally) {
    let path = f.script("tampered", "echo original");
    let m = f.manifest("tampered", &path, Some(&[]), "");
    f.script("tampered", "echo tampered");
    let c = f.load("tampered.toml", &m, CapSet::all(), false);
    t.attack(
        "load a binary whose sha256 is not the manifest's",
        refused_as(&c, "tampered", "plugin_sha256_mismatch"),
        format!("{:?}", c.refused()),
    );

    let path = f.script("greedy", "true");
    let m = f.manifest("greedy", &path, Some(&["FILE_READ", "NETWORK", "SHELL"]), "");
    let c = f.load("greedy.toml", &m, CapSet::FILE_READ | CapSet::FILE_WRITE, false);
    let names_excess = c.refused().iter().any(|r| r.reason.to_string().contains("SHELL,NETWORK exceed"));
    t.attack(
        "declare capabilities beyond the allowed mask",
        refused_as(&c, "greedy", "plugin_caps_exceed") && names_excess,
        format!("{:?}", c.refused()),
    );

    let m = f.manifest("vague", &path, None, "");
    let c = f.load("vague.toml", &m, CapSet::all(), false);
    t.attack(
        "omit the capability list (undeclared = all)",
        refused_as(&c, "vague", "plugin_caps_undeclared"),
        format!("{:?}", c.refused()),
    );
    let c = f.load("vague.toml", &m, CapSet::FILE_READ, true);
    t.attack(
        "omit the capability list under a partial mask with allow_undeclared",
        refused_as(&c, "vague", "plugin_caps_exceed"),
        format!("{:?}", c.refused()),
    );

    for builtin in ["shell", "http", "file"] {
        let m = f.manifest(builtin, &path, Some(&[]), "");
        let c = f.load(&format!("builtin-{builtin}.toml"), &m, CapSet::all(), false);
        t.attack(
            &format!("take the built-in tool name {builtin:?}"),
            refused_as(&c, builtin, "plugin_builtin_name"),
            format!("{:?}", c.refused()),
        );
    }

    let m = f.manifest("sneaky", &path, Some(&[]), "run_as_root = true");
    let c = f.load("sneaky.toml", &m, CapSet::all(), false);
    let names_key = c.refused().iter().any(|r| r.reason.to_string().contains("run_as_root"));
    t.attack(
        "a manifest with an unknown key",
        refused_as(&c, "sneaky", "plugin_manifest") && names_key,
        format!("{:?}", c.refused()),
    );
}

async fn swap_attacks(f: &Fixture, via: Via, t: &mut Tally) {
    let task = f.task("swap");
    let path = f.script("swapped", "echo original");
    let p = f.plugin("swapped", &path, &[], "");
    let o = exec(via, &p, &[], &task).await;
    assert_eq!(out(&o), "original\n", "control: {}", show(&o));
    let evil = f.script("evil", "echo PWNED");
    std::fs::rename(&evil, &path).unwrap();
    let o = exec(via, &p, &[], &task).await;
    let denied = |o: &ShellOutcome| {
        let err = String::from_utf8_lossy(&o.stderr);
        o.err_code == Some(ErrCode::PolicyDenied)
            && !out(o).contains("PWNED")
            && err.starts_with("machina-task-exec: ")
            && err.contains("expected sha256:")
    };
    t.attack("swap the plugin by rename after it was loaded", denied(&o), show(&o));

    let path = f.script("rewritten", "echo original");
    let p = f.plugin("rewritten", &path, &[], "");
    std::fs::write(&path, "#!/bin/sh\necho PWNED\n").unwrap();
    let o = exec(via, &p, &[], &task).await;
    t.attack("rewrite the plugin in place after it was loaded", denied(&o), show(&o));

    let elf = f.copy_of("elf-swapped", "/usr/bin/true");
    let p = f.plugin("elf-swapped", &elf, &[], "");
    let evil = f.copy_of("elf-evil", "/usr/bin/id");
    std::fs::rename(&evil, &elf).unwrap();
    let o = exec(via, &p, &[], &task).await;
    t.attack(
        "swap an ELF plugin for another program",
        o.err_code == Some(ErrCode::PolicyDenied) && o.stdout.is_empty(),
        show(&o),
    );
}

async fn network_attack(f: &Fixture, via: Via, t: &mut Tally) {
    let pre = preflight();
    if !pre.landlock_network {
        println!("skipped: TCP denial needs landlock ABI 4, this kernel has {}", pre.landlock_abi);
        return;
    }
    let path = f.executable("connect", b"#!/bin/bash\necho hi > /dev/tcp/127.0.0.1/$1\n");
    let connect = |caps: &'static [&'static str], name: &'static str| {
        let p = f.plugin(name, &path, caps, "");
        let task = f.task(name);
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port().to_string();
            let o = exec(via, &p, &[port.as_str()], &task).await;
            let accepted = match listener.accept() {
                Ok(_) => true,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) => panic!("accept: {e}"),
            };
            (accepted, o)
        }
    };
    let (accepted, o) = connect(&["NETWORK"], "net-allowed").await;
    assert!(accepted && o.err_code.is_none(), "control: with NETWORK the connection works: {}", show(&o));
    let (accepted, o) = connect(&[], "net-denied").await;
    t.attack("TCP connect to a loopback listener without NETWORK", !accepted && o.err_code.is_some(), show(&o));
}

async fn file_attacks(f: &Fixture, via: Via, t: &mut Tally) {
    let writer = f.script("writer", "echo x > \"$PWD/out\" && echo WROTE");
    let p = f.plugin("writer-ok", &writer, &["FILE_WRITE"], "");
    let task = f.task("writer-ok");
    let o = exec(via, &p, &[], &task).await;
    assert!(task.join("out").exists(), "control: with FILE_WRITE the task dir is writable: {}", show(&o));
    let p = f.plugin("writer", &writer, &[], "");
    let task = f.task("writer");
    let o = exec(via, &p, &[], &task).await;
    t.attack(
        "write into the task dir without FILE_WRITE",
        !task.join("out").exists() && !out(&o).contains("WROTE"),
        show(&o),
    );
    let planted = Path::new("/tmp").join(format!("machina-plugin-attack-{}", std::process::id()));
    let sh = f.script("tmp-writer", &format!("echo x > {}", planted.display()));
    let p = f.plugin("tmp-writer", &sh, &["FILE_WRITE"], "");
    let o = exec(via, &p, &[], &f.task("tmp-writer")).await;
    t.attack("write outside the task dir even with FILE_WRITE", !planted.exists(), show(&o));
    let _ = std::fs::remove_file(&planted);

    let secret = f.data.join("secret");
    let reader = f.copy_of("reader", "/usr/bin/cat");
    let read_paths = format!("read_paths = [\"{}\"]", f.data.display());
    let p = f.plugin("reader-ok", &reader, &["FILE_READ"], &read_paths);
    let o = exec(via, &p, &[secret.to_str().unwrap()], &f.task("reader-ok")).await;
    assert_eq!(out(&o), SECRET, "control: with FILE_READ its read_paths are readable: {}", show(&o));
    let p = f.plugin("reader", &reader, &[], &read_paths);
    let o = exec(via, &p, &[secret.to_str().unwrap()], &f.task("reader")).await;
    t.attack("read declared read_paths without FILE_READ", !out(&o).contains(SECRET), show(&o));
    let p = f.plugin("reader-other", &reader, &["FILE_READ"], &read_paths);
    let o = exec(via, &p, &["/etc/shadow"], &f.task("reader-other")).await;
    t.attack("read beyond its read_paths with FILE_READ", o.err_code.is_some() && o.stdout.is_empty(), show(&o));
}

async fn shell_attacks(f: &Fixture, via: Via, t: &mut Tally) {
    // A copy of env: an ELF plugin that execs whatever its arguments name.
    let env = f.copy_of("launcher", "/usr/bin/env");
    let with_shell = f.plugin("launcher-shell", &env, &["SHELL"], "");
    let without = f.plugin("launcher", &env, &[], "");
    let task = f.task("launcher");
    let o = exec(via, &with_shell, &["/bin/sh", "-c", "echo ESCAPED"], &task).await;
    assert_eq!(out(&o), "ESCAPED\n", "control: with SHELL /bin/sh runs: {}", show(&o));
    let o = exec(via, &without, &["/bin/sh", "-c", "echo ESCAPED"], &task).await;
    t.attack("exec /bin/sh without SHELL", !out(&o).contains("ESCAPED") && o.err_code.is_some(), show(&o));
    let o = exec(via, &without, &["/usr/bin/id"], &task).await;
    t.attack("exec /usr/bin/id without SHELL", !out(&o).contains("uid=") && o.err_code.is_some(), show(&o));

    let arch = std::env::consts::ARCH.replace('_', "-");
    match dynamic_loaders().into_iter().find(|l| l.to_string_lossy().contains(&arch)) {
        Some(ld) => {
            let ld = ld.to_str().unwrap();
            let o = exec(via, &with_shell, &[ld, "/usr/bin/id"], &task).await;
            assert!(out(&o).contains("uid="), "control: with SHELL the loader runs id: {}", show(&o));
            let o = exec(via, &without, &[ld, "/usr/bin/id"], &task).await;
            t.attack("run /usr/bin/id through the dynamic loader without SHELL", !out(&o).contains("uid="), show(&o));
        }
        None => println!("skipped: no dynamic loader for {arch} found"),
    }

    let script = f.script("script-launcher", "/usr/bin/id && echo RAN-ID");
    let p = f.plugin("script-launcher", &script, &[], "");
    let o = exec(via, &p, &[], &task).await;
    t.attack("a script plugin without SHELL execs /usr/bin/id", !out(&o).contains("RAN-ID"), show(&o));
    let dropper =
        f.script("dropper", "cp /usr/bin/true ./dropped && chmod +x ./dropped && ./dropped && echo RAN-DROPPED");
    let p = f.plugin("dropper", &dropper, &["FILE_WRITE", "SHELL"], "");
    let task = f.task("dropper");
    let o = exec(via, &p, &[], &task).await;
    let written = task.join("dropped").exists();
    t.attack(
        "exec a program it wrote into the task dir (FILE_WRITE + SHELL)",
        written && !out(&o).contains("RAN-DROPPED"),
        show(&o),
    );
}

async fn memory_attack(f: &Fixture, via: Via, t: &mut Tally) {
    let dd = f.copy_of("dd", "/usr/bin/dd");
    let args = ["if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"];
    let p = f.plugin("dd-memory", &dd, &["MEMORY"], "");
    let o = exec(via, &p, &args, &f.task("dd-memory")).await;
    assert_eq!(o.err_code, None, "control: with MEMORY a 256 MiB buffer fits: {}", show(&o));
    let p = f.plugin("dd", &dd, &[], "");
    let o = exec(via, &p, &args, &f.task("dd")).await;
    t.attack(
        "allocate beyond the normal address-space limit without MEMORY",
        o.err_code == Some(ErrCode::CmdNonzero),
        show(&o),
    );
}
