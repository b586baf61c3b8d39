//! Child processes: starting the daemons and the bus, and killing them whatever happens.

use super::*;

/// Every child process and temp directory alive, for the guard and the signal handler.
pub(super) static REGISTRY: Mutex<Registry> = Mutex::new(Registry { children: Vec::new(), dirs: Vec::new() });
/// Set by SIGINT/SIGTERM/SIGHUP: the measuring loops stop.
pub(super) static STOP: AtomicBool = AtomicBool::new(false);

/// What has to go when the benchmark ends.
pub(super) struct Registry {
    /// (name, process), in start order.
    pub(super) children: Vec<(String, Child)>,
    /// Temp directories (removed by their `TempDir` normally; by the signal handler otherwise).
    pub(super) dirs: Vec<PathBuf>,
}

/// The registry, even if a panic poisoned its lock.
pub(super) fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kill (SIGKILL) and reap every registered child, newest first.
pub(super) fn kill_all() {
    let mut r = registry();
    while let Some((_, mut c)) = r.children.pop() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Kills every child process when dropped: at the end of a mode, on an error, or while a
/// panic unwinds.
pub(super) struct ChildGuard;

impl ChildGuard {
    /// Start `cmd` as a registered child named `name`.
    pub(super) fn spawn(&self, name: &str, cmd: &mut Command) -> Result<u32> {
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        let pid = child.id();
        registry().children.push((name.to_string(), child));
        Ok(pid)
    }

    /// Register an already started child.
    pub(super) fn adopt(&self, name: &str, child: Child) {
        registry().children.push((name.to_string(), child));
    }

    /// Fail if a child exited.
    pub(super) fn check_alive(&self) -> Result<()> {
        for (name, c) in registry().children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                bail!("{name} exited: {status}");
            }
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_all();
    }
}

/// On SIGINT/SIGTERM/SIGHUP: kill the children, remove the temp directories, exit 130.
pub(super) fn install_signal_handler() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (ready_tx, ready_rx) = mpsc::sync_channel::<std::io::Result<()>>(1);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let handlers = (|| {
                Ok((signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?))
            })();
            let (mut int, mut term, mut hup) = match handlers {
                Ok(h) => {
                    let _ = ready_tx.send(Ok(()));
                    h
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            STOP.store(true, Ordering::SeqCst);
            // Held until the process exits: the main thread, seeing STOP, waits on it.
            let mut r = registry();
            while let Some((_, mut c)) = r.children.pop() {
                let _ = c.kill();
                let _ = c.wait();
            }
            for d in r.dirs.drain(..) {
                let _ = std::fs::remove_dir_all(d);
            }
            eprintln!("wake-latency: interrupted; child processes killed");
            std::process::exit(130);
        });
    })?;
    ready_rx.recv().map_err(|_| anyhow!("the signal thread died"))?.context("cannot handle signals")
}

/// A loopback port that was free a moment ago.
pub(super) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A private dbus-daemon admitting everyone (as the test harness runs it); returns its address.
pub(super) fn start_bus(guard: &ChildGuard, dir: &Path) -> Result<String> {
    let socket = dir.join("bus");
    let config = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>"#,
        socket.display()
    );
    let conf = dir.join("bus.conf");
    std::fs::write(&conf, config)?;
    let mut child = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("bus.log"))?)
        .spawn()
        .context("cannot start dbus-daemon (package dbus)")?;
    let stdout = child.stdout.take().expect("piped");
    guard.adopt("dbus-daemon", child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("unix:") {
        bail!("dbus-daemon printed {line:?}");
    }
    Ok(line.trim().to_string())
}

/// Configuration drop-in, token and recipe under `dir`.
pub(super) fn write_config(dir: &Path, port: u16, bus: &str, poll_ms: u64) -> Result<PathBuf> {
    let conf = dir.join("config.d");
    let recipes = dir.join("recipes.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(&recipes)?;
    std::fs::write(dir.join("token"), TOKEN)?;
    std::fs::write(
        conf.join("50-wake-bench.toml"),
        format!(
            "recipe_dirs = [\"{recipes}\"]\n\
             [api]\ntoken_file = \"{token}\"\nlisten = \"127.0.0.1:{port}\"\nidle_exit_secs = 0\n\
             [bus]\naddress = \"{bus}\"\n\
             [worker]\npoll_ms = {poll_ms}\n\
             [ledger]\nsynchronous = \"full\"\n",
            recipes = recipes.display(),
            token = dir.join("token").display(),
        ),
    )?;
    std::fs::write(
        recipes.join(format!("{RECIPE}.toml")),
        format!(
            "name = \"{RECIPE}\"\n\
             description = \"wake-latency benchmark: one no-op task, no approval\"\n\
             approval_required = false\n\
             max_concurrency = 1\nmax_steps = 1\nallowed_tools = [\"shell\"]\n\n\
             [[task]]\nname = \"true\"\ntool = \"shell\"\nargv = [\"/usr/bin/true\"]\ntimeout_secs = 10\n"
        ),
    )?;
    Ok(conf)
}

/// A machina daemon's command line, logging warnings to `log` (not the journal).
pub(super) fn daemon(bin_dir: &Path, name: &str, conf: &Path, state: &Path, log: &Path) -> Result<Command> {
    let bin = bin_dir.join(name);
    if !bin.is_file() {
        bail!("{} not found (cargo build --release --bin {name}, or --bin-dir)", bin.display());
    }
    let mut cmd = Command::new(bin);
    cmd.arg("--config-dir").arg(conf).arg("--state-dir").arg(state);
    cmd.env_remove("STATE_DIRECTORY").env_remove("CREDENTIALS_DIRECTORY").env_remove("NOTIFY_SOCKET");
    cmd.env("MACHINA_LOG", "warn").env("MACHINA_LOG_TARGET", "stderr");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(log)?);
    Ok(cmd)
}
