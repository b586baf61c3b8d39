//! Admin endpoints and protections over real HTTP: permission leases (issue, list, revoke,
//! input checks), the effective configuration, and per-client, per-endpoint rate limits.

mod common;

use serde_json::json;

#[tokio::test]
async fn leases_are_issued_once_listed_without_tokens_and_revoked() {
    let s = common::start().await;
    let (st, v) = s.send(s.post("/leases").json(&json!({"tool": "http", "tier": 2, "ttlSecs": 60}))).await;
    assert_eq!(st, 201, "{v}");
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("mpl_"), "{v}");
    assert_eq!(v["issued_by"], "api");
    let id = v["id"].as_str().unwrap().to_string();
    let (st, list) = s.send(s.get("/leases")).await;
    assert_eq!(st, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(token), "listing never shows a token: {list}");
    let (st, v) = s.send(s.http.delete(s.url(&format!("/leases/{id}"))).bearer_auth(common::TOKEN)).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["revoked_at_ms"].is_i64(), "{v}");
    let (_, list) = s.send(s.get("/leases")).await;
    assert!(list.as_array().unwrap().is_empty(), "a revoked lease is not usable: {list}");
    let (_, all) = s.send(s.get("/leases?all=true")).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let (st, _) = s.send(s.http.delete(s.url("/leases/nope")).bearer_auth(common::TOKEN)).await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn bad_lease_requests_say_what_is_wrong_and_store_nothing() {
    let s = common::start().await;
    let cases = [
        (json!({"tool": "shell", "tier": 1}), "needs no lease"),
        (json!({"tool": "http", "tier": 3}), "is tier 2"),
        (json!({"tool": "http", "tier": 9}), "out of range"),
        (json!({"tool": "Bad Name", "tier": 2}), "not a tool name"),
        (json!({"tool": "http", "tier": 2, "ttlSecs": 0}), "ttl"),
        (json!({"tool": "http", "tier": 2, "ttlSecs": 999999999}), "ttl"),
        (json!({"tool": "http", "tier": 2, "extra": 1}), "extra"),
    ];
    for (body, why) in cases {
        let (st, v) = s.send(s.post("/leases").json(&body)).await;
        assert!(st == 400 || st == 422, "{body}: {st} {v}");
        assert!(v["message"].as_str().unwrap_or("").contains(why), "{body}: {v} should say {why:?}");
    }
    assert!(s.ledger.list_leases(true).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_effective_configuration_is_served_to_admins_only() {
    let s = common::start().await;
    let (st, v) = s.send(s.get("/config")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["profile"], "dev");
    assert_eq!(v["leases"]["free_tier"], 1);
    let st = s.http.get(s.url("/config")).send().await.unwrap().status().as_u16();
    assert_eq!(st, 401);
}

#[tokio::test]
async fn a_client_over_its_rate_is_told_when_to_come_back() {
    let s = common::start_with(|c| {
        c.api.rate_limit_per_sec = 1;
        c.api.rate_limit_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = s.get("/runs").send().await.unwrap();
        statuses.push((r.status().as_u16(), r.headers().get("retry-after").cloned()));
    }
    assert_eq!(statuses.iter().filter(|(st, _)| *st == 200).count(), 3, "{statuses:?}");
    let (st, retry) = &statuses[4];
    assert_eq!(*st, 429);
    assert!(retry.is_some(), "a 429 carries Retry-After");
    // Another endpoint has its own budget; unauthenticated guesses are limited too.
    assert_eq!(s.get("/leases").send().await.unwrap().status().as_u16(), 200);
    let guesses: Vec<u16> = futures_statuses(&s, 5).await;
    assert!(guesses.contains(&429) && guesses.iter().all(|c| *c == 401 || *c == 429), "{guesses:?}");
}

async fn futures_statuses(s: &common::Server, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(s.http.get(s.url("/artifacts/00")).bearer_auth("wrong").send().await.unwrap().status().as_u16());
    }
    out
}
