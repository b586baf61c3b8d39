//! Real machina processes (machina-api, machina-worker) on a temp state directory.

#![allow(dead_code)]

pub mod dbus;
pub mod tally;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "process-test-token-0123456789";

pub struct Machina {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub port: u16,
    pub api: Option<Child>,
    pub workers: Vec<(String, Child)>,
    pub http: reqwest::blocking::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Machina {
    /// A state dir and config with `extra` TOML appended (e.g. a short lease).
    pub fn new(extra: &str) -> Self {
        Self::with_state(None, extra)
    }

    pub fn with_state(state: Option<PathBuf>, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("config.d");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(dir.path().join("token"), TOKEN).unwrap();
        // No D-Bus unless a test brings its own bus.
        let bus = if extra.contains("[bus]") { "" } else { "[bus]\naddress = \"none\"\n" };
        let toml = format!(
            "recipe_dirs = [\"{}/recipes.d\"]\n[api]\ntoken_file = \"{}/token\"\nidle_exit_secs = 0\n{bus}{extra}\n",
            dir.path().display(),
            dir.path().display()
        );
        std::fs::write(conf.join("50-test.toml"), toml).unwrap();
        let state = state.unwrap_or_else(|| dir.path().join("state"));
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { dir, state, port: free_port(), api: None, workers: Vec::new(), http }
    }

    fn common_args(&self, cmd: &mut Command) {
        cmd.arg("--config-dir").arg(self.dir.path().join("config.d")).arg("--state-dir").arg(&self.state);
        cmd.env_remove("STATE_DIRECTORY").env_remove("CREDENTIALS_DIRECTORY").env("MACHINA_LOG", "warn");
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }

    pub fn start_api(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_machina-api"));
        self.common_args(&mut cmd);
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        self.api = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.http.get(self.url("/health")).send().is_ok_and(|r| r.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("machina-api did not become healthy");
    }

    pub fn start_worker(&mut self, id: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_machina-worker"));
        self.common_args(&mut cmd);
        cmd.arg("--id").arg(id);
        self.workers.push((id.to_string(), cmd.spawn().unwrap()));
    }

    pub fn kill9_api(&mut self) {
        if let Some(mut c) = self.api.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn kill9_worker(&mut self, id: &str) {
        let i = self.workers.iter().position(|(w, _)| w == id).unwrap();
        let (_, mut c) = self.workers.remove(i);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_with_id(path, body, None)
    }

    pub fn post_with_id(&self, path: &str, body: &Value, rid: Option<&str>) -> (u16, Value) {
        let mut rb = self.http.post(self.url(path)).bearer_auth(TOKEN).json(body);
        if let Some(r) = rid {
            rb = rb.header("x-request-id", r);
        }
        let r = rb.send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).bearer_auth(TOKEN).send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    }

    /// Enqueue a sandbox-default run of these argvs; returns the run id.
    pub fn enqueue_commands(&self, cmds: &[&[&str]]) -> String {
        let tasks: Vec<Value> = cmds.iter().map(|a| json!({"argv": a})).collect();
        let (st, v) =
            self.post("/enqueue", &json!({"goal": "t", "recipe": "sandbox-default", "inputs": {"tasks": tasks}}));
        assert_eq!(st, 202, "{v}");
        v["run"]["id"].as_str().unwrap().to_string()
    }

    pub fn wait_for(&self, run: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, v) = self.get(&format!("/runs/{run}"));
            if pred(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "run {run}: timed out waiting for {what}: {v}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_status(&self, run: &str, want: &str) -> Value {
        self.wait_for(run, want, Duration::from_secs(60), |v| v["status"] == want)
    }

    /// Read-only SQL against the ledger file.
    pub fn sql_i64(&self, sql: &str) -> i64 {
        let c = rusqlite::Connection::open(ledger_path(&self.state)).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

/// Run `machinactl --address ADDRESS ARGS…`, optionally as another user (`setpriv`).
pub fn machinactl(address: &str, as_uid: Option<u32>, args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_machinactl");
    let mut cmd = match as_uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg("--clear-groups").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("--address").arg(address).args(args).env_remove("MACHINA_BUS_ADDRESS");
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// Start `machinactl --address ADDRESS ARGS…` with stdin, stdout and stderr piped and `env`
/// set (nothing else of machina's inherited), for commands that read standard input (`chat`).
pub fn spawn_machinactl(address: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machinactl"));
    cmd.arg("--address").arg(address).args(args);
    cmd.env_remove("MACHINA_BUS_ADDRESS").env_remove("CREDENTIALS_DIRECTORY").envs(env.iter().copied());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

pub fn ledger_path(state: &Path) -> PathBuf {
    state.join("ledger.db")
}

impl Drop for Machina {
    fn drop(&mut self) {
        for (_, c) in &mut self.workers {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(c) = &mut self.api {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
