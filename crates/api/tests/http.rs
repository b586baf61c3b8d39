//! The HTTP API against a real server on a loopback port: the happy path with a
//! real worker, and every kind of bad input getting its status and error kind.

mod common;

use common::{Server, TOKEN, start};
use serde_json::{Value, json};

fn kind(v: &Value) -> &str {
    v["error"].as_str().unwrap_or("<no error kind>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_to_result_through_the_api() {
    let s = start().await;
    let stop = s.spawn_worker("w1");
    let (status, intent) =
        s.send(s.post("/intents").json(&json!({"goal": "greet", "inputs": {"words": ["x", "y"]}}))).await;
    assert_eq!(status, 201, "{intent}");
    let id = intent["id"].as_str().unwrap();
    let (status, run) = s
        .send(
            s.post(&format!("/intents/{id}/run"))
                .json(&json!({"recipe": "demo", "queuePartitionKey": "a", "workload": {"concurrency": 2}})),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let detail = s.wait_status(&run_id, &["waiting_input"]).await;
    assert_eq!(detail["nextAction"], "APPROVE");
    let plan_sha = detail["planSha256"].as_str().unwrap().to_string();
    // The plan artifact is served and hashes to its name.
    let plan = s
        .http
        .get(s.url(&format!("/artifacts/{plan_sha}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(machina_core::plan::sha256_hex(&plan), plan_sha);
    let plan: Value = serde_json::from_slice(&plan).unwrap();
    assert_eq!(plan["tasks"].as_array().unwrap().len(), 3);

    let (status, v) = s
        .send(
            s.post(&format!("/runs/{run_id}/approve-plan"))
                .json(&json!({"approvedBy": "alice", "planSha256": plan_sha})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["approvedPlanSha256"], plan_sha.as_str());
    let done = s.wait_status(&run_id, &["succeeded", "failed"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let tasks = done["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    let out = s.artifact_text(&tasks[0]["stdoutSha256"]).await;
    assert_eq!(out, "hello, x\n");
    let steps: Vec<String> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["step"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            "CompileST:started",
            "CompileST:succeeded",
            "DecideST:started",
            "DecideST:succeeded",
            "ExecuteST:started",
            "ExecuteST:succeeded"
        ]
    );

    // Events: JSON list with gapless sequence numbers, and `after` pages.
    let (_, events) = s.send(s.get(&format!("/runs/{run_id}/events"))).await;
    let seqs: Vec<i64> = events.as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let (_, later) = s.send(s.get(&format!("/runs/{run_id}/events?after=5"))).await;
    assert_eq!(later[0]["seq"], 6);
    // SSE replays the log and ends because the run is terminal.
    let sse = s.get(&format!("/runs/{run_id}/events")).header("accept", "text/event-stream").send().await.unwrap();
    assert!(sse.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let text = sse.text().await.unwrap();
    assert_eq!(text.matches("\nevent: ").count() + usize::from(text.starts_with("event: ")), seqs.len(), "{text}");
    assert!(text.contains("event: state_changed"));

    // Listing and filters.
    let (_, list) = s.send(s.get("/runs?status=succeeded&partition=a")).await;
    assert_eq!(list["runs"][0]["id"], run_id.as_str());
    let (_, list) = s.send(s.get("/runs?status=failed")).await;
    assert!(list["runs"].as_array().unwrap().is_empty());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submission_replays_the_first_response() {
    let s = start().await;
    let body = json!({"goal": "g", "inputs": {"words": ["a"]}, "recipe": "demo"});
    let first = s.post("/enqueue").header("x-request-id", "req-1").json(&body).send().await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.headers()["x-request-id"], "req-1");
    let first: Value = first.json().await.unwrap();
    let again = s.post("/enqueue").header("x-request-id", "req-1").json(&body).send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replay"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let (_, list) = s.send(s.get("/runs")).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "one run only");
    // Same id, different request: conflict, nothing created.
    let (status, v) = s
        .send(
            s.post("/enqueue")
                .header("x-request-id", "req-1")
                .json(&json!({"goal": "other", "inputs": {"words": ["a"]}, "recipe": "demo"})),
        )
        .await;
    assert_eq!((status, kind(&v)), (409, "conflict"), "{v}");
    // Without a client id every request is new, and a generated id is echoed.
    let r = s.post("/enqueue").json(&body).send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"].to_str().unwrap().len(), 36);
    let (_, list) = s.send(s.get("/runs")).await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_kind() {
    let s = start_small_body().await;
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("malformed JSON", s.post("/intents").body("{\"goal\": "), 400, "invalid_input"),
        ("not an object", s.post("/intents").body("[1,2]"), 422, "invalid_request"),
        ("unknown field", s.post("/intents").json(&json!({"goal": "g", "bogus": 1})), 422, "invalid_request"),
        ("wrong type", s.post("/intents").json(&json!({"goal": 5})), 422, "invalid_request"),
        ("empty goal", s.post("/intents").json(&json!({"goal": "  "})), 400, "invalid_input"),
        ("unknown recipe", s.post("/enqueue").json(&json!({"goal": "g", "recipe": "nope"})), 400, "invalid_input"),
        (
            "over concurrency cap",
            s.post("/enqueue").json(
                &json!({"goal": "g", "inputs": {"words": ["a"]}, "recipe": "demo", "workload": {"concurrency": 99}}),
            ),
            400,
            "queue_policy_violation",
        ),
        (
            "over step cap",
            s.post("/enqueue").json(&json!({"goal": "g", "inputs": {"words": vec!["w"; 40]}, "recipe": "demo"})),
            400,
            "queue_policy_violation",
        ),
        (
            "inputs unusable by recipe",
            s.post("/enqueue").json(&json!({"goal": "g", "inputs": {}, "recipe": "demo"})),
            400,
            "invalid_input",
        ),
        (
            "bad partition key",
            s.post("/enqueue")
                .json(&json!({"goal": "g", "inputs": {"words": ["a"]}, "recipe": "demo", "queuePartitionKey": "a b"})),
            400,
            "invalid_input",
        ),
        ("unknown intent", s.post("/intents/nope/run").json(&json!({"recipe": "demo"})), 404, "not_found"),
        ("unknown run", s.get("/runs/nope"), 404, "not_found"),
        ("unknown run events", s.get("/runs/nope/events"), 404, "not_found"),
        ("unknown artifact", s.get(&format!("/artifacts/{}", "0".repeat(64))), 404, "not_found"),
        ("bad artifact name", s.get("/artifacts/..%2F..%2Fetc%2Fpasswd"), 404, "not_found"),
        ("approve unknown run", s.post("/runs/nope/approve-plan").json(&json!({"approvedBy": "a"})), 404, "not_found"),
        ("oversized body", s.post("/intents").json(&json!({"goal": "x".repeat(4096)})), 413, "payload_too_large"),
        ("bad status filter", s.get("/runs?status=running"), 400, "invalid_input"),
        ("page too large", s.get("/runs?limit=100000"), 400, "invalid_input"),
        (
            "bad request id",
            s.post("/intents").header("x-request-id", "has space").json(&json!({"goal": "g"})),
            400,
            "invalid_input",
        ),
        ("missing token", s.http.get(s.url("/runs")), 401, "unauthorized"),
        ("wrong token", s.http.get(s.url("/runs")).bearer_auth("wrong-token-wrong-token"), 401, "unauthorized"),
    ];
    for (what, rb, want_status, want_kind) in cases {
        let (status, v) = s.send(rb).await;
        assert_eq!((status, kind(&v)), (want_status, want_kind), "{what}: {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{what}: message missing");
    }
    let (_, list) = s.send(s.get("/runs")).await;
    assert!(list["runs"].as_array().unwrap().is_empty(), "no bad request created anything");
    // Health and metrics stay open.
    assert_eq!(s.http.get(s.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(s.http.get(s.url("/metrics")).send().await.unwrap().status(), 200);
}

async fn start_small_body() -> Server {
    common::start_with(|s| s.api.body_limit_bytes = 2048).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_transitions_are_409_with_stable_kinds() {
    let s = start().await;
    let run = s.enqueue_demo(&["a"]).await;
    // Queued: approving and retrying are illegal.
    let (st, v) = s.send(s.post(&format!("/runs/{run}/approve-plan")).json(&json!({"approvedBy": "a"}))).await;
    assert_eq!((st, kind(&v)), (409, "illegal_state"), "{v}");
    let (st, v) = s.send(s.post(&format!("/runs/{run}/retry"))).await;
    assert_eq!((st, kind(&v)), (409, "illegal_state"), "{v}");
    let stop = s.spawn_worker("w1");
    s.wait_status(&run, &["waiting_input"]).await;
    // Approving a plan other than the current one is refused.
    let (st, v) = s
        .send(
            s.post(&format!("/runs/{run}/approve-plan"))
                .json(&json!({"approvedBy": "a", "planSha256": "a".repeat(64)})),
        )
        .await;
    assert_eq!((st, kind(&v)), (409, "conflict"), "{v}");
    let (st, _) = s.send(s.post(&format!("/runs/{run}/approve-plan")).json(&json!({"approvedBy": "a"}))).await;
    assert_eq!(st, 200);
    s.wait_status(&run, &["succeeded"]).await;
    let (st, v) = s.send(s.post(&format!("/runs/{run}/retry"))).await;
    assert_eq!((st, kind(&v)), (409, "retry_drift"), "{v}");
    let (st, v) = s.send(s.post(&format!("/runs/{run}/cancel"))).await;
    assert_eq!((st, kind(&v)), (409, "illegal_state"), "{v}");
    let (st, v) = s.send(s.post(&format!("/runs/{run}/approve-plan")).json(&json!({"approvedBy": "a"}))).await;
    assert_eq!((st, kind(&v)), (409, "illegal_state"), "{v}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_allowlist_executable_fails_closed_and_retry_resumes() {
    let s = start().await;
    let body = json!({"goal": "g", "recipe": "sandbox-default", "inputs": {"tasks": [
        {"argv": ["/usr/bin/printf", "ok"]}, {"argv": ["/usr/bin/id"]}, {"argv": ["/usr/bin/true"]}]}});
    let (st, v) = s.send(s.post("/enqueue").json(&body)).await;
    assert_eq!(st, 202, "{v}");
    let run = v["run"]["id"].as_str().unwrap().to_string();
    let stop = s.spawn_worker("w1");
    s.wait_status(&run, &["waiting_input"]).await;
    s.send(s.post(&format!("/runs/{run}/approve-plan")).json(&json!({"approvedBy": "a"}))).await;
    let done = s.wait_status(&run, &["failed", "succeeded"]).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errCode"], "POLICY_DENIED");
    assert_eq!(done["nextAction"], "RETRY");
    let denied = &done["tasks"][1];
    assert_eq!(denied["status"], "failed");
    let why = s.artifact_text(&denied["stderrSha256"]).await;
    assert!(why.contains("not on the allowlist"), "{why}");
    // Retry resumes ExecuteST under the same run id; the denied task fails again, the done one is not re-run.
    let (st, v) = s.send(s.post(&format!("/runs/{run}/retry"))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("executing")), "{v}");
    let again = s.wait_status(&run, &["failed", "succeeded"]).await;
    assert_eq!(again["status"], "failed");
    assert_eq!(again["generation"], 1);
    assert_eq!(again["tasks"][0]["attempt"], 1, "succeeded task not re-run");
    assert_eq!(again["tasks"][1]["attempt"], 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_waiting_run_and_metrics_count_it() {
    let s = start().await;
    let run = s.enqueue_demo(&["a", "b"]).await;
    let (st, v) = s.send(s.post(&format!("/runs/{run}/cancel"))).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("machina_runs{status=\"canceled\"} 1"), "{metrics}");
    assert!(metrics.contains("machina_duplicate_receipts 0"), "{metrics}");
    let (_, health) = s.send(s.http.get(s.url("/health"))).await;
    assert_eq!(health["ledger"]["journal_mode"], "wal");
    assert_eq!(health["ledger"]["durable_commits"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_a_sync_stops_the_api_with_a_clear_error() {
    let s = start().await;
    s.enqueue_demo(&["a"]).await;
    // The WAL vanishing stands in for a failed fdatasync: the next write cannot be confirmed.
    std::fs::remove_file(s.ledger.path().with_extension("db-wal")).unwrap();
    let body = json!({"goal": "g", "inputs": {"words": ["b"]}, "recipe": "demo", "queuePartitionKey": "p1"});
    let (st, v) = s.send(s.post("/enqueue").json(&body)).await;
    assert_eq!((st, v["error"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("must restart"), "{v}");
    let (st, _) = s.send(s.http.get(s.url("/health"))).await;
    assert_eq!(st, 503, "health fails once the ledger is poisoned");
    // The supervisor stops the service (with an error) within its next tick.
    tokio::time::timeout(std::time::Duration::from_secs(5), s.shutdown.cancelled())
        .await
        .expect("the API stops itself when its ledger is poisoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_ledger_is_poisoned_stops_with_an_error() {
    let s = start().await;
    let w = machina_worker::Worker::new("w1".into(), s.ledger.clone(), s.recipes(), s.settings.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(w.run(1, stop.clone()));
    let run = s.enqueue_demo(&["a"]).await;
    s.wait_status(&run, &["waiting_input", "succeeded"]).await;
    std::fs::remove_file(s.ledger.path().with_extension("db-wal")).unwrap();
    // The next submission cannot be confirmed (this test's API and worker share one ledger,
    // as the threads of one process would): it is refused, and the worker's next write
    // fails the same way, so it stops by itself, not told to, and says why.
    let body = json!({"goal": "g", "inputs": {"words": ["b"]}, "recipe": "demo", "queuePartitionKey": "p1"});
    assert_eq!(s.send(s.post("/enqueue").json(&body)).await.0, 503);
    let out = tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the worker stops by itself")
        .unwrap();
    let err = out.expect_err("a poisoned ledger ends the worker with an error");
    assert!(err.is_fatal(), "{err}");
    assert!(!stop.is_cancelled());
}
