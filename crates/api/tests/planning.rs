//! Plan sources and arbitration end to end: a real API on a loopback port, real in-process
//! workers running real sandboxed tasks, and a real HTTP mock of an OpenAI-compatible API
//! on loopback for the judge.

mod common;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use machina_core::config::Settings;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const KEY: &str = "sk-test-judge-0123456789";

/// One task that sleeps `inputs.secs` seconds; no approval.
const SLOW: &str = r#"
name = "slow"
approval_required = false
max_concurrency = 1
max_steps = 1
allowed_tools = ["shell"]
[[task]]
name = "nap"
argv = ["/usr/bin/sleep", "{{input.secs}}"]
timeout_secs = 30
"#;

/// Planned by the judge's models.
const LLM: &str = r#"
name = "llm-planned"
approval_required = false
planner = "llm"
max_concurrency = 2
max_steps = 3
allowed_tools = ["shell"]
"#;

/// A scripted OpenAI-compatible chat completions API: each model answers one fixed JSON
/// (or a status code); every request is logged by model.
#[derive(Default)]
struct Mock {
    answers: HashMap<String, Result<Value, u16>>,
    seen: Mutex<Vec<String>>,
}

async fn completions(State(m): State<Arc<Mock>>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("?").to_string();
    m.seen.lock().unwrap().push(model.clone());
    match m.answers.get(&model) {
        Some(Ok(answer)) => Json(json!({
            "id": "c1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.to_string()}, "finish_reason": "stop"}],
        }))
        .into_response(),
        Some(Err(code)) => StatusCode::from_u16(*code).unwrap().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn mock(answers: &[(&str, Result<Value, u16>)]) -> (String, Arc<Mock>) {
    let m = Arc::new(Mock {
        answers: answers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        seen: Mutex::default(),
    });
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(m.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, m)
}

/// `[judge]` with provider "mock" at `url`, the key in a root-only directory.
fn judge(s: &mut Settings, url: &str, primary: &str, fallback: &[&str], deny: &[&str]) {
    let creds = s.state_dir.parent().unwrap().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    let key = creds.join("machina-judge");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    s.judge = serde_json::from_value(json!({
        "primary": primary, "fallback": fallback, "deny": deny,
        "credentials_dir": creds, "timeout_ms": 3000, "max_retries": 0,
        "providers": [{"id": "mock", "kind": "openai", "base_url": url}],
    }))
    .unwrap();
}

async fn enqueue(s: &common::Server, recipe: &str, inputs: Value) -> String {
    let body = json!({"goal": "g", "recipe": recipe, "inputs": inputs, "queuePartitionKey": "shared"});
    let (st, v) = s.send(s.post("/enqueue").json(&body)).await;
    assert_eq!(st, 202, "{v}");
    v["run"]["id"].as_str().unwrap().to_string()
}

async fn events(s: &common::Server, run: &str, kind: &str) -> Vec<Value> {
    let (_, v) = s.send(s.get(&format!("/runs/{run}/events"))).await;
    let list = v.as_array().cloned().or_else(|| v["events"].as_array().cloned()).unwrap_or_default();
    list.into_iter().filter(|e| e["kind"] == kind).map(|e| e["data"].clone()).collect()
}

async fn wait_event(s: &common::Server, run: &str, kind: &str) -> Value {
    for _ in 0..500 {
        if let Some(e) = events(s, run, kind).await.pop() {
            return e;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("run {run} never got a {kind} event");
}

/// Start an active slow run, then a second one in the same partition; returns both ids.
async fn collide(s: &common::Server, first_secs: u32) -> (String, String) {
    let a = enqueue(s, "slow", json!({"secs": first_secs.to_string()})).await;
    s.wait_status(&a, &["executing"]).await;
    let b = enqueue(s, "slow", json!({"secs": "0"})).await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn defer_queues_the_new_run_behind_the_active_one() {
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| c.arbitration.policy = "defer".into()).await;
    let _w1 = s.spawn_worker("w1");
    let _w2 = s.spawn_worker("w2");
    let (a, b) = collide(&s, 1).await;
    let e = wait_event(&s, &b, "arbitration").await;
    assert_eq!((e["decision"].as_str(), e["behind"].as_str()), (Some("defer"), Some(a.as_str())), "{e}");
    assert_eq!(s.wait_status(&b, &["succeeded", "failed"]).await["status"], "succeeded");
    let (a_done, b_steps) =
        (s.send(s.get(&format!("/runs/{a}"))).await.1, s.send(s.get(&format!("/runs/{b}"))).await.1);
    assert_eq!(a_done["status"], "succeeded", "the active run was left alone");
    let b_executed =
        b_steps["steps"].as_array().unwrap().iter().find(|st| st["step"] == "ExecuteST").unwrap()["at"].as_i64();
    assert!(b_executed >= a_done["updatedAt"].as_i64(), "B ran only after A finished: {b_steps} / {a_done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_cancels_the_active_run_and_starts_the_new_one() {
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| c.arbitration.policy = "abort".into()).await;
    // One process with two slots: the abort reaches the slot running A at once (across
    // processes it travels as RunStateChanged on the bus).
    let _w = s.spawn_worker_slots("w1", 2);
    let (a, b) = collide(&s, 20).await;
    assert_eq!(s.wait_status(&b, &["succeeded", "failed"]).await["status"], "succeeded");
    let a_run = s.wait_status(&a, &["canceled"]).await;
    // Its running task was stopped and recorded as canceled.
    for _ in 0..500 {
        let (_, v) = s.send(s.get(&format!("/runs/{a}"))).await;
        if v["tasks"][0]["status"] == "canceled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, v) = s.send(s.get(&format!("/runs/{a}"))).await;
    assert_eq!(v["tasks"][0]["status"], "canceled", "{v} / {a_run}");
    assert_eq!(wait_event(&s, &a, "aborted_by_arbitration").await["by"].as_str(), Some(b.as_str()));
    assert_eq!(wait_event(&s, &b, "arbitration").await["decision"], "abort");
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_runs_both_within_the_partition_cap() {
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| c.arbitration.max_parallel_runs = 2).await;
    let _w: Vec<_> = ["w1", "w2", "w3"].iter().map(|w| s.spawn_worker(w)).collect();
    let (a, b) = collide(&s, 4).await;
    let e = wait_event(&s, &b, "arbitration").await;
    assert_eq!(e["decision"], "parallel", "{e}");
    s.wait_status(&b, &["succeeded"]).await;
    assert_eq!(s.send(s.get(&format!("/runs/{a}"))).await.1["status"], "executing", "B finished while A still ran");
    // With A and C active, a fourth run would make three: over the cap, deferred.
    let c = enqueue(&s, "slow", json!({"secs": "3"})).await;
    s.wait_status(&c, &["executing"]).await;
    let d = enqueue(&s, "slow", json!({"secs": "0"})).await;
    let e = wait_event(&s, &d, "arbitration").await;
    assert_eq!(e["decision"], "defer", "{e}");
    assert!(e["reason"].as_str().unwrap().contains("max_parallel_runs = 2"), "{e}");
    s.wait_status(&d, &["succeeded"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_judge_decides_and_its_model_is_recorded() {
    let (url, m) = mock(&[("arbiter", Ok(json!({"decision": "abort", "reason": "newer work wins"})))]).await;
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| {
        c.arbitration.policy = "judge".into();
        judge(c, &url, "mock/arbiter", &[], &[]);
    })
    .await;
    let _w = s.spawn_worker_slots("w1", 2);
    let (a, b) = collide(&s, 20).await;
    let e = wait_event(&s, &b, "arbitration").await;
    assert_eq!((e["decision"].as_str(), e["model"].as_str()), (Some("abort"), Some("mock/arbiter")), "{e}");
    assert_eq!(e["reason"], "newer work wins");
    s.wait_status(&a, &["canceled"]).await;
    assert_eq!(m.seen.lock().unwrap().as_slice(), ["arbiter"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn judge_failures_fall_back_to_the_configured_default() {
    // The only model answers 500: AUTONOMY_JUDGE_UNAVAILABLE, then the fallback (defer).
    let (url, _m) = mock(&[("broken", Err(500))]).await;
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| {
        c.arbitration.policy = "judge".into();
        c.arbitration.judge_fallback = "defer".into();
        judge(c, &url, "mock/broken", &[], &[]);
    })
    .await;
    let _w1 = s.spawn_worker("w1");
    let _w2 = s.spawn_worker("w2");
    let (a, b) = collide(&s, 1).await;
    let e = wait_event(&s, &b, "arbitration").await;
    assert_eq!(e["decision"], "defer", "{e}");
    assert_eq!(e["judge"]["errCode"], "AUTONOMY_JUDGE_UNAVAILABLE", "{e}");
    assert_eq!(e["behind"].as_str(), Some(a.as_str()));
    s.wait_status(&b, &["succeeded"]).await;

    // Every candidate denied: AUTONOMY_JUDGE_POLICY_BLOCKED, and the mock is never asked.
    let (url, m) = mock(&[("arbiter", Ok(json!({"decision": "abort", "reason": "x"})))]).await;
    let s = common::start_with_recipes(&[("slow", SLOW)], |c| {
        c.arbitration.policy = "judge".into();
        c.arbitration.judge_fallback = "parallel".into();
        judge(c, &url, "mock/arbiter", &[], &["mock/*"]);
    })
    .await;
    let _w3 = s.spawn_worker("w3");
    let _w4 = s.spawn_worker("w4");
    let (_, b) = collide(&s, 1).await;
    let e = wait_event(&s, &b, "arbitration").await;
    assert_eq!(
        (e["decision"].as_str(), e["judge"]["errCode"].as_str()),
        (Some("parallel"), Some("AUTONOMY_JUDGE_POLICY_BLOCKED")),
        "{e}"
    );
    assert!(m.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_llm_plan_is_validated_and_the_first_valid_candidate_wins() {
    let bad = json!({"recipe": "llm-planned", "concurrency": 1,
        "tasks": [{"name": "x", "tool": "http", "argv": ["GET", "http://example.com/"], "timeout_secs": 5}]});
    let good = json!({"recipe": "llm-planned", "concurrency": 1,
        "tasks": [{"name": "hello", "tool": "shell", "argv": ["/usr/bin/echo", "planned by a model"], "timeout_secs": 5}]});
    let (url, m) = mock(&[("bad", Ok(bad)), ("good", Ok(good))]).await;
    let s =
        common::start_with_recipes(&[("llm-planned", LLM)], |c| judge(c, &url, "mock/bad", &["mock/good"], &[])).await;
    let _w = s.spawn_worker("w1");
    let run = enqueue(&s, "llm-planned", json!({"what": "say hello"})).await;
    let done = s.wait_status(&run, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.artifact_text(&done["tasks"][0]["stdoutSha256"]).await, "planned by a model\n");
    let e = wait_event(&s, &run, "plan_source").await;
    assert_eq!((e["source"].as_str(), e["model"].as_str()), (Some("llm"), Some("mock/good")), "{e}");
    assert_eq!(e["decision"]["failed"][0]["kind"], "invalid_answer", "the tool it may not use is why: {e}");
    assert_eq!(m.seen.lock().unwrap().as_slice(), ["bad", "good"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_valid_llm_plan_fails_the_compile_with_the_judge_code() {
    let (url, _m) = mock(&[("broken", Err(500))]).await;
    let s = common::start_with_recipes(&[("llm-planned", LLM)], |c| {
        judge(c, &url, "mock/broken", &[], &[]);
        c.retry.max_attempts = 1;
    })
    .await;
    let _w = s.spawn_worker("w1");
    let run = enqueue(&s, "llm-planned", json!({})).await;
    let done = s.wait_status(&run, &["failed", "retries_exceeded"]).await;
    assert_eq!(done["errCode"], "AUTONOMY_JUDGE_UNAVAILABLE", "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_from_the_policy_driver_runs() {
    const DRIVER: &str = r#"
name = "driven"
approval_required = false
planner = "driver"
max_concurrency = 1
max_steps = 2
allowed_tools = ["shell"]
"#;
    let s = common::start_with_recipes(&[("driven", DRIVER)], |c| {
        let root = c.state_dir.parent().unwrap().join("drivers");
        std::fs::create_dir_all(&root).unwrap();
        // Echoes the intent's goal into the task, so the input on stdin is proven read.
        std::fs::write(
            root.join("plan.sh"),
            "#!/bin/sh\ngoal=$(sed -n 's/.*\"goal\":\"\\([^\"]*\\)\".*/\\1/p')\n\
             printf '{\"recipe\":\"driven\",\"concurrency\":1,\"tasks\":[{\"name\":\"t\",\"tool\":\"shell\",\
             \"argv\":[\"/usr/bin/echo\",\"%s\"],\"timeout_secs\":5}]}' \"$goal\"\n",
        )
        .unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        c.driver = serde_json::from_value(json!({
            "command": [sh, root.join("plan.sh")],
            "allowed_executables": [sh, std::fs::canonicalize("/usr/bin/sed").unwrap()],
            "allowed_roots": [root],
        }))
        .unwrap();
    })
    .await;
    let _w = s.spawn_worker("w1");
    let body = json!({"goal": "driven-goal", "recipe": "driven", "inputs": {}, "queuePartitionKey": "d"});
    let (st, v) = s.send(s.post("/enqueue").json(&body)).await;
    assert_eq!(st, 202, "{v}");
    let run = v["run"]["id"].as_str().unwrap().to_string();
    let done = s.wait_status(&run, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.artifact_text(&done["tasks"][0]["stdoutSha256"]).await, "driven-goal\n");
    assert_eq!(wait_event(&s, &run, "plan_source").await["source"], "driver");
}
