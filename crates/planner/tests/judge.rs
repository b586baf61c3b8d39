//! The judge against a real HTTP mock of both APIs on loopback: one axum server serving
//! OpenAI's `/v1/chat/completions` and Anthropic's `/v1/messages`, scripted by model name
//! (good answers, invalid answers, delays, 429 with Retry-After, 500, malformed bodies,
//! oversized bodies, a redirect to another origin, an error echoing the key) and refusing a
//! wrong key with 401. It logs every request it gets, so a test can say what was sent,
//! with which credential, in which order, and what never reached it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use machina_core::ErrCode;
use machina_core::config::ProviderSettings;
use machina_planner::llm::{
    Judge, JudgeError, JudgeFailure, JudgeMode, JudgeRequest, JudgeSettings, Judged, ProviderKind, SkipReason,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OPENAI_KEY: &str = "sk-openai-test-7f3a";
const ANTHROPIC_KEY: &str = "sk-ant-test-91c2";
/// How long a `slow-*` model takes to answer.
const SLOW_MS: u64 = 3000;

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Seen {
    api: &'static str,
    model: String,
    authorization: Option<String>,
    api_key: Option<String>,
    version: Option<String>,
    body: Value,
}

#[derive(Default)]
struct MockState {
    log: Mutex<Vec<Seen>>,
    /// Requests per model so far (a `flaky-*` model answers 429 first).
    count: Mutex<BTreeMap<String, u32>>,
}

/// The mock server; shut down on `stop` or drop.
struct Mock {
    addr: SocketAddr,
    state: Arc<MockState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    async fn start() -> Self {
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self { addr, state, shutdown: Some(tx), task }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.log.lock().unwrap().clone()
    }

    fn models(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.model).collect()
    }

    /// Shuts the server down and waits until its port no longer answers.
    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task).await.is_err() {
            self.task.abort();
        }
        assert!(tokio::net::TcpStream::connect(self.addr).await.is_err(), "the mock still answers");
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn openai(State(st): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(&st, "openai", &headers, &body).await
}

async fn anthropic(State(st): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(&st, "anthropic", &headers, &body).await
}

async fn serve(st: &MockState, api: &'static str, headers: &HeaderMap, body: &[u8]) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("?").to_owned();
    let seen = Seen {
        api,
        model: model.clone(),
        authorization: text("authorization"),
        api_key: text("x-api-key"),
        version: text("anthropic-version"),
        body: body.clone(),
    };
    st.log.lock().unwrap().push(seen.clone());
    let n = {
        let mut count = st.count.lock().unwrap();
        let n = count.entry(model.clone()).or_default();
        *n += 1;
        *n
    };
    let authorized = match api {
        "openai" => seen.authorization.as_deref() == Some(&format!("Bearer {OPENAI_KEY}")),
        _ => seen.api_key.as_deref() == Some(ANTHROPIC_KEY) && seen.version.is_some(),
    };
    if !authorized {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"message": "invalid api key"}})))
            .into_response();
    }
    let family = model.split('-').next().unwrap_or_default();
    match family {
        "good" => answer(api, &body, json!({"verdict": "ok", "by": model})),
        "invalid" => answer(api, &body, json!({"verdict": "maybe", "by": model})),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(SLOW_MS)).await;
            answer(api, &body, json!({"verdict": "ok", "by": model}))
        }
        "flaky" if n == 1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({"error": {"message": "slow down"}})),
        )
            .into_response(),
        "flaky" => answer(api, &body, json!({"verdict": "ok", "by": model})),
        "broken" => {
            (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "internal"}}))).into_response()
        }
        "garbage" => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"choices\": [").into_response(),
        "huge" => (StatusCode::OK, "x".repeat(64 << 10)).into_response(),
        // No Content-Length: only reading the stream can tell it is too large.
        "endless" => {
            let chunks =
                std::iter::repeat_n(Ok::<_, std::convert::Infallible>(Bytes::from(vec![b' '; 1024])), 16 << 10);
            axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        "redirect" => {
            (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, "http://localhost:1/v1/elsewhere")]).into_response()
        }
        "echo" => {
            let echoed = format!("key {} is not allowed here", seen.authorization.unwrap_or_default());
            (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"message": echoed}}))).into_response()
        }
        _ => (StatusCode::NOT_FOUND, axum::Json(json!({"error": {"message": "no such model"}}))).into_response(),
    }
}

/// `answer` in the API's shape: OpenAI's message content; Anthropic's forced tool call when
/// the request offered the tool, else a fenced text block.
fn answer(api: &str, request: &Value, answer: Value) -> Response {
    let body = match api {
        "openai" => json!({
            "id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.to_string()}, "finish_reason": "stop"}],
        }),
        _ if request.get("tools").is_some() => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "answer", "input": answer}],
        }),
        _ => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "end_turn",
            "content": [{"type": "text", "text": format!("```json\n{answer}\n```")}],
        }),
    };
    axum::Json(body).into_response()
}

/// Temp directories standing in for `$CREDENTIALS_DIRECTORY`, `judge.credentials_dir` and
/// the fixtures directory.
struct Dirs {
    _tmp: tempfile::TempDir,
    systemd: PathBuf,
    etc: PathBuf,
    fixtures: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let [systemd, etc] = ["systemd-creds", "etc-creds"].map(|d| tmp.path().join(d));
        for d in [&systemd, &etc] {
            std::fs::create_dir(d).unwrap();
        }
        let fixtures = tmp.path().join("fixtures");
        Self { _tmp: tmp, systemd, etc, fixtures }
    }

    /// Both keys, the OpenAI one from systemd, the Anthropic one from the root-only directory.
    fn with_keys() -> Self {
        let d = Self::new();
        put(&d.systemd, "machina-judge", OPENAI_KEY);
        put(&d.etc, "machina-judge-anthropic", ANTHROPIC_KEY);
        d
    }

    fn list(&self) -> Vec<PathBuf> {
        vec![self.systemd.clone(), self.etc.clone()]
    }

    fn judge(&self, s: &JudgeSettings) -> Judge {
        Judge::new(s, self.list(), self.fixtures.clone()).unwrap()
    }
}

fn put(dir: &Path, id: &str, key: &str) {
    let p = dir.join(id);
    std::fs::write(&p, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Providers `openai`, `anthropic` (both at `base_url`) and `gone` (a port nobody listens on).
fn settings(base_url: &str, primary: &str, fallback: &[&str]) -> JudgeSettings {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let provider = |id: &str, kind, base_url: String, credential: &str| ProviderSettings {
        id: id.into(),
        kind,
        base_url: Some(base_url),
        credential: credential.into(),
    };
    JudgeSettings {
        primary: primary.into(),
        fallback: fallback.iter().map(|s| s.to_string()).collect(),
        timeout_ms: 2000,
        max_retries: 1,
        backoff_base_ms: 10,
        providers: vec![
            provider("openai", ProviderKind::Openai, base_url.into(), "machina-judge"),
            provider("anthropic", ProviderKind::Anthropic, base_url.into(), "machina-judge-anthropic"),
            provider("gone", ProviderKind::Openai, format!("http://{dead}/v1"), "machina-judge"),
        ],
        ..JudgeSettings::default()
    }
}

fn question() -> JudgeRequest {
    JudgeRequest {
        purpose: "arbitrate".into(),
        system: "You arbitrate between two plans.".into(),
        prompt: "Plan A or plan B?".into(),
        schema: Some(json!({
            "type": "object",
            "properties": {"verdict": {"type": "string"}, "by": {"type": "string"}},
            "required": ["verdict", "by"],
            "additionalProperties": false,
        })),
    }
}

/// Accepts only `verdict: "ok"`; the value is the model that said it.
fn validate(v: &Value) -> Result<String, String> {
    match v["verdict"].as_str() {
        Some("ok") => Ok(v["by"].as_str().unwrap_or_default().to_owned()),
        other => Err(format!("verdict {other:?} is not \"ok\"")),
    }
}

async fn ask(judge: &Judge) -> Result<Judged<String>, JudgeFailure> {
    let q = question();
    let answer = judge.ask(&q, validate);
    // The worker spawns questions on the runtime: the future must be Send.
    fn spawnable<F: std::future::Future + Send>(f: F) -> F {
        f
    }
    spawnable(answer).await
}

fn failed_kinds(d: &machina_planner::llm::Decision) -> Vec<(String, String)> {
    d.failed.iter().map(|a| (a.candidate.clone(), a.kind.clone())).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[tokio::test]
async fn the_auth_header_carries_the_credential_for_both_kinds() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let got = ask(&dirs.judge(&settings(&mock.base_url(), "openai/good-1", &[]))).await.unwrap();
    assert_eq!((got.value.as_str(), got.model.as_str()), ("good-1", "openai/good-1"));
    let got = ask(&dirs.judge(&settings(&mock.base_url(), "anthropic/good-2", &[]))).await.unwrap();
    assert_eq!(got.model, "anthropic/good-2");
    assert_eq!(got.decision.chosen.as_deref(), Some("anthropic/good-2"));

    let seen = mock.seen();
    assert_eq!(seen.len(), 2);
    let (o, a) = (&seen[0], &seen[1]);
    assert_eq!((o.api, a.api), ("openai", "anthropic"));
    assert_eq!(o.authorization.as_deref(), Some(format!("Bearer {OPENAI_KEY}").as_str()));
    assert_eq!(o.api_key, None, "the OpenAI key goes in Authorization only");
    assert_eq!(a.api_key.as_deref(), Some(ANTHROPIC_KEY));
    assert_eq!(a.version.as_deref(), Some("2023-06-01"));
    assert_eq!(a.authorization, None, "the Anthropic key goes in x-api-key only");
    // Structured output where the API offers it.
    assert_eq!(o.body["response_format"]["type"], "json_schema");
    assert_eq!(o.body["response_format"]["json_schema"]["schema"], question().schema.unwrap());
    assert_eq!(a.body["tool_choice"], json!({"type": "tool", "name": "answer"}));
    assert_eq!(o.body["max_tokens"], 1024);
}

#[tokio::test]
async fn deny_skips_a_candidate_that_the_mock_never_sees() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/good-1", &["anthropic/good-2"]);
    s.deny = vec!["openai/good-1".into()];
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(got.model, "anthropic/good-2");
    let skip = &got.decision.skipped;
    assert_eq!((skip.len(), skip[0].candidate.as_str(), skip[0].reason), (1, "openai/good-1", SkipReason::Denied));
    assert_eq!(mock.models(), ["good-2"]);
}

#[tokio::test]
async fn allow_restricts_the_candidates() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/good-1", &["openai/good-2", "anthropic/good-3"]);
    s.allow = vec!["anthropic/*".into()];
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(got.model, "anthropic/good-3");
    let reasons: Vec<_> = got.decision.skipped.iter().map(|s| (s.candidate.as_str(), s.reason.as_str())).collect();
    assert_eq!(reasons, [("openai/good-1", "not in allow list"), ("openai/good-2", "not in allow list")]);
    assert_eq!(mock.models(), ["good-3"]);
}

#[tokio::test]
async fn fallbacks_are_tried_in_order_and_the_first_valid_answer_wins() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let s = settings(
        &mock.base_url(),
        "openai/broken-1",
        &["openai/garbage-1", "anthropic/invalid-1", "anthropic/good-3", "openai/good-4"],
    );
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!((got.value.as_str(), got.model.as_str()), ("good-3", "anthropic/good-3"));
    // 500 is retried once (max_retries = 1); good-4 is never asked.
    assert_eq!(mock.models(), ["broken-1", "broken-1", "garbage-1", "invalid-1", "good-3"]);
    assert_eq!(
        failed_kinds(&got.decision),
        pairs(&[
            ("openai/broken-1", "http_status"),
            ("openai/garbage-1", "malformed_response"),
            ("anthropic/invalid-1", "invalid_answer"),
        ])
    );
    assert!(got.decision.failed[2].error.contains("\"maybe\""), "{:?}", got.decision.failed[2]);
    assert!(got.decision.skipped.is_empty());
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let started = Instant::now();
    let got = ask(&dirs.judge(&settings(&mock.base_url(), "openai/flaky-1", &[]))).await.unwrap();
    assert_eq!(got.model, "openai/flaky-1");
    assert!(got.decision.failed.is_empty());
    assert_eq!(mock.models(), ["flaky-1", "flaky-1"]);
    // The backoff alone is 10 ms: only the provider's Retry-After: 1 makes the wait a second.
    assert!(started.elapsed() >= Duration::from_millis(950), "waited only {:?}", started.elapsed());
}

#[tokio::test]
async fn a_rejected_credential_moves_on_to_the_next_candidate() {
    let mock = Mock::start().await;
    let dirs = Dirs::new();
    put(&dirs.systemd, "machina-judge", "sk-wrong");
    put(&dirs.etc, "machina-judge-anthropic", ANTHROPIC_KEY);
    let got = ask(&dirs.judge(&settings(&mock.base_url(), "openai/good-1", &["anthropic/good-2"]))).await.unwrap();
    assert_eq!(got.model, "anthropic/good-2");
    assert_eq!(failed_kinds(&got.decision), pairs(&[("openai/good-1", "credential_rejected")]));
    assert!(got.decision.failed[0].error.contains("401"));
    assert_eq!(mock.models(), ["good-1", "good-2"], "a 401 is not retried");
}

#[tokio::test]
async fn policy_blocked_exactly_when_every_candidate_is_filtered_out() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/good-1", &["anthropic/good-2", "openai/good-3"]);
    s.allow = vec!["openai/*".into()];
    s.deny = vec!["openai/*".into()];
    let err = ask(&dirs.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgePolicyBlocked);
    assert!(matches!(err, JudgeFailure::PolicyBlocked(_)));
    let reasons: Vec<_> = err.decision().skipped.iter().map(|s| s.reason).collect();
    assert_eq!(reasons, [SkipReason::Denied, SkipReason::NotAllowed, SkipReason::Denied]);
    assert!(err.to_string().contains("judge.allow"), "{err}");
    assert!(mock.seen().is_empty(), "nothing reaches a provider when the policy blocks");

    // One candidate left, even one that fails, is not a policy block.
    s.deny = vec!["openai/good-1".into()];
    s.allow.clear();
    s.fallback = vec!["openai/broken-2".into()];
    let err = ask(&dirs.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
}

#[tokio::test]
async fn unavailable_when_no_candidate_answers() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let s = settings(&mock.base_url(), "openai/broken-2", &["anthropic/garbage-2", "gone/good-5", "openai/nope-1"]);
    let err = ask(&dirs.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
    assert_eq!(
        failed_kinds(err.decision()),
        pairs(&[
            ("openai/broken-2", "http_status"),
            ("anthropic/garbage-2", "malformed_response"),
            ("gone/good-5", "unreachable"),
            ("openai/nope-1", "http_status"),
        ])
    );
    assert_eq!(err.decision().chosen, None);
    let text = err.to_string();
    assert!(text.contains("gone/good-5") && text.contains("reachable"), "{text}");
}

#[tokio::test]
async fn strict_mode_fails_closed_without_credentials() {
    let mock = Mock::start().await;
    let dirs = Dirs::new();
    let mut s = settings(&mock.base_url(), "openai/good-1", &["anthropic/good-2"]);
    s.strict = true;
    let err = ask(&dirs.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
    let d = err.decision();
    assert!(d.skipped.iter().all(|s| s.reason == SkipReason::NoCredentials) && d.skipped.len() == 2);
    assert!(d.skipped[1].detail.as_deref().unwrap().contains("machina-judge-anthropic"), "{:?}", d.skipped[1]);
    assert!((d.mode, d.replay_fallback) == (JudgeMode::Live, false));
    assert!(err.to_string().contains("LoadCredential="), "{err}");
    assert!(mock.seen().is_empty());

    // One credential present: that candidate is asked, the other skipped.
    put(&dirs.etc, "machina-judge-anthropic", ANTHROPIC_KEY);
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(got.model, "anthropic/good-2");
    assert_eq!(got.decision.skipped[0].reason, SkipReason::NoCredentials);
}

#[tokio::test]
async fn non_strict_mode_without_credentials_falls_back_to_replay() {
    let mock = Mock::start().await;
    let with_keys = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/good-1", &[]);
    s.mode = JudgeMode::Record;
    let recorded = ask(&with_keys.judge(&s)).await.unwrap();
    mock.stop().await;

    s.mode = JudgeMode::Live;
    let no_keys = Judge::new(&s, Vec::new(), with_keys.fixtures.clone()).unwrap();
    let got = ask(&no_keys).await.unwrap();
    assert_eq!((got.value, got.model), (recorded.value, recorded.model));
    assert!(got.decision.replay_fallback);
    assert_eq!(got.decision.mode, JudgeMode::Replay);

    // Nothing recorded: a clear miss, not a silent success.
    let empty = Dirs::new();
    let err = ask(&empty.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
    assert_eq!(failed_kinds(err.decision()), pairs(&[("openai/good-1", "no_fixture")]));
}

#[tokio::test]
async fn record_then_replay_is_byte_for_byte_identical() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "anthropic/invalid-3", &["openai/garbage-3", "openai/good-6"]);
    s.mode = JudgeMode::Record;
    let recorded = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(recorded.model, "openai/good-6");
    assert_eq!(std::fs::read_dir(&dirs.fixtures).unwrap().count(), 3, "one fixture per exchange");
    mock.stop().await;

    s.mode = JudgeMode::Replay;
    let replay = || async { ask(&dirs.judge(&s)).await.unwrap() };
    let (first, second) = (replay().await, replay().await);
    let bytes = |j: &Judged<String>| {
        serde_json::to_vec(&json!({
            "value": j.value, "model": j.model, "chosen": j.decision.chosen,
            "skipped": j.decision.skipped, "failed": j.decision.failed,
        }))
        .unwrap()
    };
    assert_eq!(bytes(&first), bytes(&recorded), "replay answers exactly what was recorded");
    let whole = |j: &Judged<String>| serde_json::to_vec(&(&j.value, &j.model, &j.decision)).unwrap();
    assert_eq!(whole(&first), whole(&second), "replay is deterministic");
    assert_eq!(first.decision.mode, JudgeMode::Replay);
    assert_eq!(first.decision.failed.len(), 2);
}

#[tokio::test]
async fn a_replay_miss_is_a_clear_unavailable() {
    let dirs = Dirs::new();
    let mut s = settings("http://127.0.0.1:9/v1", "openai/good-1", &["anthropic/good-2"]);
    s.mode = JudgeMode::Replay;
    let err = ask(&dirs.judge(&s)).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
    let d = err.decision();
    assert!(d.skipped.is_empty(), "replay needs no credentials");
    assert!(d.failed.iter().all(|a| a.kind == "no_fixture" && a.error.starts_with("no fixture for request ")));
    let text = err.to_string();
    assert!(text.contains("judge.mode = \"record\""), "{text}");
}

#[tokio::test]
async fn a_slow_model_times_out_and_the_next_is_asked() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/slow-1", &["anthropic/good-7"]);
    s.timeout_ms = 300;
    let started = Instant::now();
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(got.model, "anthropic/good-7");
    assert_eq!(failed_kinds(&got.decision), pairs(&[("openai/slow-1", "timeout")]));
    assert!(started.elapsed() < Duration::from_millis(SLOW_MS), "did not wait for the slow model");
    assert_eq!(mock.models(), ["slow-1", "good-7"], "a timeout is not retried");
}

#[tokio::test]
async fn oversized_bodies_foreign_redirects_and_echoed_keys_are_contained() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let fallback = ["anthropic/endless-1", "openai/redirect-1", "openai/echo-1", "anthropic/good-8"];
    let mut s = settings(&mock.base_url(), "openai/huge-1", &fallback);
    s.max_response_bytes = 4096;
    let got = ask(&dirs.judge(&s)).await.unwrap();
    assert_eq!(got.model, "anthropic/good-8");
    assert_eq!(
        failed_kinds(&got.decision),
        pairs(&[
            ("openai/huge-1", "too_large"),
            ("anthropic/endless-1", "too_large"),
            // Followed, it would have ended in a refused connection ("unreachable").
            ("openai/redirect-1", "http_status"),
            ("openai/echo-1", "http_status"),
        ])
    );
    assert!(got.decision.failed[1].error.contains("more than"), "{:?}", got.decision.failed[1]);
    assert!(got.decision.failed[2].error.contains("307"));
    let shown = serde_json::to_string(&got.decision).unwrap();
    assert!(!shown.contains(OPENAI_KEY) && shown.contains("<redacted>"), "{shown}");
}

#[tokio::test]
async fn a_request_over_the_size_cap_is_never_sent() {
    let mock = Mock::start().await;
    let dirs = Dirs::with_keys();
    let mut s = settings(&mock.base_url(), "openai/good-1", &[]);
    s.max_request_bytes = 1024;
    let big = JudgeRequest { prompt: "x".repeat(4096), ..question() };
    let err = dirs.judge(&s).ask(&big, validate).await.unwrap_err();
    assert_eq!(failed_kinds(err.decision()), pairs(&[("openai/good-1", "too_large")]));
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn an_unconfigured_judge_is_unavailable() {
    let dirs = Dirs::with_keys();
    let judge = dirs.judge(&JudgeSettings::default());
    assert!(!judge.is_configured());
    let err = ask(&judge).await.unwrap_err();
    assert_eq!(err.err_code(), ErrCode::AutonomyJudgeUnavailable);
    assert!(err.to_string().contains("judge.primary"), "{err}");
}

#[test]
fn strict_mode_refuses_plain_http_off_loopback() {
    let mut s = settings("http://judge.example.invalid/v1", "openai/good-1", &[]);
    let dirs = Dirs::new();
    assert!(Judge::new(&s, dirs.list(), dirs.fixtures.clone()).is_ok(), "dev may use a LAN model over http");
    s.strict = true;
    let err = Judge::new(&s, dirs.list(), dirs.fixtures.clone()).unwrap_err();
    assert!(matches!(err, JudgeError::Settings(_)) && err.to_string().contains("judge.providers[openai].base_url"));
    s.providers[0].base_url = Some("http://[::1]:9/v1".into());
    s.providers[1].base_url = Some("https://judge.example.invalid/v1".into());
    assert!(Judge::new(&s, dirs.list(), dirs.fixtures.clone()).is_ok(), "loopback and https are fine");
}

#[test]
fn invalid_settings_are_refused_by_new() {
    let dirs = Dirs::new();
    let s = settings("http://127.0.0.1:9/v1", "mistral/large", &[]);
    let err = Judge::new(&s, dirs.list(), dirs.fixtures.clone()).unwrap_err();
    assert_eq!(err.kind(), "invalid_settings");
    assert!(err.to_string().contains("judge.primary"), "{err}");
}
