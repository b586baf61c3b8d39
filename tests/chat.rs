//! `machinactl chat` end to end: a private dbus-daemon, the real machina-api (and a worker
//! where runs must finish), and the real machinactl driven through its standard input —
//! by pattern, against a loopback mock of OpenAI's chat completions (record, then replay
//! with the mock gone), against a provider that fails, and against one that is too slow.

mod common;

use common::dbus::PrivateBus;
use common::{Machina, spawn_machinactl};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The key the mock accepts.
const KEY: &str = "sk-chat-test-5e1d";
/// How long the mock's slow answers take (well over the tests' one-second phase limit).
const SLOW: Duration = Duration::from_secs(3);

fn start(bus: &PrivateBus, extra: &str) -> Machina {
    let mut m = Machina::new(&format!("[bus]\naddress = \"{}\"\n{extra}", bus.address));
    m.start_api();
    m
}

/// A `machinactl chat` session fed line by line.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Chat {
    fn start(address: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = spawn_machinactl(address, &[&["chat"], args].concat(), env);
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("session still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Ends the input and returns the transcript (standard output); the session must exit 0.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "chat failed:\n{stdout}\n{stderr}");
        assert!(stderr.is_empty(), "nothing on standard error: {stderr}");
        stdout.into_owned()
    }
}

/// One whole scripted session.
fn session(address: &str, args: &[&str], env: &[(&str, &str)], lines: &[&str]) -> String {
    let mut chat = Chat::start(address, args, env);
    for l in lines {
        chat.say(l);
    }
    chat.finish()
}

/// Polls the API until a run exists; returns its id.
fn first_run(m: &Machina) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = m.get("/runs");
        if let Some(id) = v["runs"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < deadline, "no run was created: {v}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn pattern_mode_runs_approves_and_reports_through_the_gate() {
    let bus = PrivateBus::start();
    let mut m = start(&bus, "");
    m.start_worker("w1");
    let mut chat = Chat::start(&bus.address, &["--no-llm"], &[]);
    chat.say("approve last");
    chat.say("frobnicate the widgets");
    chat.say(r#"run sandbox-default tasks=[{"argv":["/usr/bin/true"]}]"#);
    let run = first_run(&m);
    // Each line is handled after the one before it: from here on the run waits at the gate.
    let waiting = m.wait_status(&run, "waiting_input");
    assert_eq!(waiting["approvedBy"], Value::Null);
    chat.say("list");
    chat.say(&format!("status {run}"));
    chat.say("approve last");
    let done = m.wait_status(&run, "succeeded");
    chat.say("status last");
    chat.say("approve last");
    chat.say("status no-such-run");
    chat.say("history");
    // One write, so the session cannot have ended before the line after quit is sent.
    chat.say("quit\nstatus last");
    let transcript = chat.finish();

    // Approved by the caller, as the bus vouches for it, at the gate the run waited at.
    assert_eq!(done["approvedBy"], "root", "{done}");
    let plan = done["planSha256"].as_str().unwrap();
    let shown = transcript.replace(&run, "RUN").replace(&plan[..12], "PLAN");
    let expected = r#"(no language model: --no-llm; commands are parsed by pattern and results summed up from templates; type "help")
I did not understand: "last" names no run yet in this session; name the run id (see "list"); try: status RUN, list [STATUS], approve RUN, retry RUN, cancel RUN, run RECIPE [KEY=VALUE…], submit RECIPE GOAL…, config, history, help, quit
I did not understand: "frobnicate the widgets" is not a command; try: status RUN, list [STATUS], approve RUN, retry RUN, cancel RUN, run RECIPE [KEY=VALUE…], submit RECIPE GOAL…, config, history, help, quit
understood: run sandbox-default tasks=[{"argv":["/usr/bin/true"]}]
RUN  queued  recipe=sandbox-default partition=default
summary: run RUN is queued: see how it goes with "status RUN"
understood: list
RUN  waiting_input  recipe=sandbox-default partition=default
1 run(s)
summary: 1 run(s): 1 waiting_input; approve one with "approve RUN"
understood: status RUN
RUN  waiting_input  recipe=sandbox-default partition=default plan=PLAN
  next: APPROVE
  waiting_input: 0/0 tasks succeeded, 0 failed, 0 running, 0 queued
summary: run RUN is waiting_input: approve it with "approve RUN"
understood: approve RUN
RUN  executing  recipe=sandbox-default partition=default plan=PLAN
summary: approved by root; run RUN is executing: see how it goes with "status RUN"
understood: status RUN
RUN  succeeded  recipe=sandbox-default partition=default plan=PLAN
  approved by root
  succeeded: 1/1 tasks succeeded, 0 failed, 0 running, 0 queued
summary: run RUN succeeded (1/1 tasks succeeded)
understood: approve RUN
error: IllegalState: PLACEHOLDER
"#;
    let (want_head, _) = expected.split_once("PLACEHOLDER").unwrap();
    assert!(shown.starts_with(want_head), "transcript:\n{shown}");
    let rest = &shown[want_head.len()..];
    let tail = r#"
summary: "approve RUN" was refused (IllegalState): check the run's state with "status RUN"
understood: status no-such-run
error: NotFound: PLACEHOLDER
summary: "status no-such-run" was refused (NotFound): check the id with "list"
"#;
    let mut at = 0;
    for piece in tail.split("PLACEHOLDER") {
        let found = rest[at..].find(piece).unwrap_or_else(|| panic!("missing {piece:?} in:\n{rest}"));
        at += found + piece.len();
    }
    // The history, numbered, with `last` resolved to the run it stood for.
    let history = &rest[at..];
    assert!(history.starts_with("  1. approve last\n     understood: unknown\n"), "{history}");
    assert!(
        history.contains("  6. approve last\n     understood: approve RUN\n     outcome: approved by root;"),
        "{history}"
    );
    assert_eq!(history.matches("understood:").count(), 9, "{history}");
    assert!(!history.contains("quit"), "{history}");
    // One run only, and nothing read after quit.
    assert_eq!(m.get("/runs").1["runs"].as_array().unwrap().len(), 1);
}

/// A request the mock got.
#[derive(Debug, Clone)]
struct Seen {
    model: String,
    purpose: String,
    message: String,
    authorization: Option<String>,
}

/// What the mock answers: an answer as the model's JSON, after a delay; or an HTTP status.
enum Answer {
    Json(Value, Duration),
    Status(u16),
}

/// A loopback mock of OpenAI's `POST /v1/chat/completions`, one thread per connection,
/// scripted by `script`; refuses a wrong key with 401 and logs every request.
struct Mock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mock {
    fn start(script: fn(&Seen) -> Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (log, stopping) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || serve(conn, &log, script));
            }
        });
        Self { addr, seen, stop, thread: Some(thread) }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening; afterwards the port refuses connections.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        self.thread.take().unwrap().join().unwrap();
        assert!(TcpStream::connect(self.addr).is_err(), "the mock still answers");
    }
}

/// One HTTP/1.1 exchange, then close.
fn serve(conn: TcpStream, log: &Mutex<Vec<Seen>>, script: fn(&Seen) -> Answer) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let (mut length, mut authorization) = (0usize, None);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("POST /v1/chat/completions "), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => authorization = Some(value.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let prompt: Value = serde_json::from_str(body["messages"][1]["content"].as_str().unwrap()).unwrap();
    let seen = Seen {
        model: body["model"].as_str().unwrap().to_string(),
        purpose: body["response_format"]["json_schema"]["name"].as_str().unwrap().to_string(),
        message: prompt["message"].as_str().unwrap().to_string(),
        authorization,
    };
    log.lock().unwrap().push(seen.clone());
    let (status, reply) = if seen.authorization.as_deref() != Some(&format!("Bearer {KEY}")) {
        (401, json!({"error": {"message": "invalid api key"}}))
    } else {
        match script(&seen) {
            Answer::Status(code) => (code, json!({"error": {"message": "internal"}})),
            Answer::Json(answer, delay) => {
                std::thread::sleep(delay);
                let message = json!({"role": "assistant", "content": answer.to_string()});
                (
                    200,
                    json!({"id": "chatcmpl-1", "object": "chat.completion",
                             "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}),
                )
            }
        }
    };
    let text = reply.to_string();
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    // The client may have given up on a slow answer: nothing to do about it then.
    let mut conn = conn;
    let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(text.as_bytes()));
}

/// The model's answer for `action` with every other field null.
fn action(action: &str) -> Value {
    json!({"action": action, "recipe": null, "goal": null, "inputs": null, "partition": null,
           "run": null, "status": null, "reason": null})
}

/// `m1`: "what is running?" means list; "list" is understood slowly; "runs please" is
/// understood at once and summed up slowly. `broken`: 500.
fn script(seen: &Seen) -> Answer {
    let now = Duration::ZERO;
    match (seen.model.as_str(), seen.purpose.as_str(), seen.message.as_str()) {
        ("broken", _, _) => Answer::Status(500),
        (_, "chat-intent", "list") => Answer::Json(action("list"), SLOW),
        (_, "chat-intent", _) => Answer::Json(action("list"), now),
        (_, "chat-summary", "runs please") => Answer::Json(json!({"summary": "late"}), SLOW),
        (_, "chat-summary", _) => Answer::Json(json!({"summary": "Nothing is running: there are no runs yet."}), now),
        _ => Answer::Status(404),
    }
}

/// A drop-in directory with the judge pointed at `base_url`, and a credentials directory
/// holding the mock's key.
struct JudgeDirs {
    _tmp: tempfile::TempDir,
    config: PathBuf,
    credentials: PathBuf,
    fixtures: PathBuf,
}

impl JudgeDirs {
    fn new(base_url: &str, model: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let [config, credentials, fixtures] = ["chat.d", "credentials", "fixtures"].map(|d| tmp.path().join(d));
        std::fs::create_dir(&config).unwrap();
        std::fs::create_dir(&credentials).unwrap();
        let key = credentials.join("machina-judge");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            config.join("50-judge.toml"),
            format!(
                "[judge]\nprimary = \"mock/{model}\"\nfixtures_dir = \"{}\"\nmax_retries = 0\n\
                 [[judge.providers]]\nid = \"mock\"\nkind = \"openai\"\nbase_url = \"{base_url}\"\ncredential = \"machina-judge\"\n",
                fixtures.display()
            ),
        )
        .unwrap();
        Self { _tmp: tmp, config, credentials, fixtures }
    }

    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    fn credentials_env(&self) -> [(&'static str, &str); 1] {
        [("CREDENTIALS_DIRECTORY", self.credentials.to_str().unwrap())]
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn a_recorded_session_replays_byte_for_byte_without_the_provider() {
    let bus = PrivateBus::start();
    let _m = start(&bus, "");
    let mock = Mock::start(script);
    let dirs = JudgeDirs::new(&mock.base_url(), "m1");
    let lines = ["what is running?", "quit"];
    let record = ["--config-dir", dirs.config(), "--mode", "record"];
    let recorded = session(&bus.address, &record, &dirs.credentials_env(), &lines);
    assert_eq!(
        recorded,
        "(the model mock/m1 reads your messages and sums up results; type \"help\" for commands)\n\
         understood: list\n\
         0 run(s)\n\
         summary: Nothing is running: there are no runs yet.\n"
    );
    let seen = mock.seen();
    let asked: Vec<(&str, &str)> = seen.iter().map(|s| (s.purpose.as_str(), s.message.as_str())).collect();
    assert_eq!(asked, [("chat-intent", "what is running?"), ("chat-summary", "what is running?")]);
    assert_eq!(count(&dirs.fixtures), 2, "one fixture per exchange");
    mock.stop();

    // No provider, no credentials: only the fixtures answer, and they answer the same.
    let replay = ["--config-dir", dirs.config(), "--mode", "replay"];
    let replayed = session(&bus.address, &replay, &[], &lines);
    assert_eq!(replayed.as_bytes(), recorded.as_bytes());
    // A message that was never recorded misses its fixture and falls back to the pattern parser.
    let missed = session(&bus.address, &replay, &[], &["list failed"]);
    assert!(missed.contains("(parsed without the model: AUTONOMY_JUDGE_UNAVAILABLE: "), "{missed}");
    assert!(missed.contains("judge.mode = \"record\""), "{missed}");
    assert!(missed.ends_with("understood: list failed\n0 run(s)\nsummary: no failed runs\n"), "{missed}");
}

#[test]
fn a_failing_provider_is_reported_once_and_the_pattern_parser_takes_over() {
    let bus = PrivateBus::start();
    let _m = start(&bus, "");
    let mock = Mock::start(script);
    let dirs = JudgeDirs::new(&mock.base_url(), "broken");
    let args = ["--config-dir", dirs.config()];
    let transcript = session(&bus.address, &args, &dirs.credentials_env(), &["list"]);
    assert_eq!(transcript.matches("AUTONOMY_JUDGE_UNAVAILABLE").count(), 1, "{transcript}");
    let lines: Vec<&str> = transcript.lines().collect();
    assert_eq!(lines.len(), 5, "{transcript}");
    assert!(lines[1].starts_with("(parsed without the model: AUTONOMY_JUDGE_UNAVAILABLE: "), "{transcript}");
    assert!(lines[1].contains("mock/broken: HTTP 500"), "{transcript}");
    assert_eq!(lines[2..], ["understood: list", "0 run(s)", "summary: no runs"]);
    // Asked once, with the key from $CREDENTIALS_DIRECTORY; the summary did not ask again.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
}

#[test]
fn each_phase_has_its_own_time_limit() {
    let bus = PrivateBus::start();
    let _m = start(&bus, "");
    let mock = Mock::start(script);
    let dirs = JudgeDirs::new(&mock.base_url(), "m1");
    let args = ["--config-dir", dirs.config(), "--phase-timeout-secs", "1"];
    let started = Instant::now();
    let transcript = session(&bus.address, &args, &dirs.credentials_env(), &["list", "runs please", "history"]);
    assert!(started.elapsed() < SLOW * 2, "waited for the slow model: {:?}", started.elapsed());
    let slow = "without the model: it took longer than 1 s (--phase-timeout-secs))";
    assert_eq!(
        transcript.lines().skip(1).collect::<Vec<_>>(),
        [
            &format!("(parsed {slow}"),
            "understood: list",
            "0 run(s)",
            "summary: no runs",
            "understood: list",
            "0 run(s)",
            &format!("(summed up {slow}"),
            "summary: no runs",
            "  1. list",
            "     understood: list",
            "     outcome: no runs",
            "  2. runs please",
            "     understood: list",
            "     outcome: no runs",
        ]
    );
    // The slow intent was not followed by a summary question: the model had just failed.
    let asked: Vec<(String, String)> = mock.seen().into_iter().map(|s| (s.purpose, s.message)).collect();
    let pairs = |l: &[(&str, &str)]| l.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        asked,
        pairs(&[("chat-intent", "list"), ("chat-intent", "runs please"), ("chat-summary", "runs please")])
    );
}
