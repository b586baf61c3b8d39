//! Attack suite: permission leases. With `leases.tiers.shell = 2` (above the free tier 1),
//! a shell task runs only with a single-use lease an admin issued for shell at tier 2.
//! Every attempt to run without one, or with a lease that is forged, reused, issued for
//! another tool, expired or revoked, fails the task with POLICY_DENIED and runs nothing;
//! the ledger never holds a token. Prints `attack-suite leases: N tried, N blocked`.

mod common;

use common::tally::Tally;

use common::{Machina, TOKEN};
use serde_json::{Value, json};
use std::time::Duration;

const RECIPE: &str = r#"
name = "leased"
description = "one shell task that presents the lease given as input"
approval_required = false
max_concurrency = 1
max_steps = 1
allowed_tools = ["shell"]

[[task]]
name = "marker"
tool = "shell"
argv = ["/usr/bin/true", "{{input.nonce}}"]
lease = "{{input.lease}}"
"#;

fn start() -> Machina {
    let mut m = Machina::new("[leases]\nfree_tier = 1\ntiers = { shell = 2 }\n[worker]\npoll_ms = 50\n");
    std::fs::create_dir_all(m.dir.path().join("recipes.d")).unwrap();
    std::fs::write(m.dir.path().join("recipes.d/leased.toml"), RECIPE).unwrap();
    m.start_api();
    m.start_worker("w1");
    m
}

fn issue(m: &Machina, tool: &str, tier: u8, ttl: u64) -> (u16, Value) {
    m.post("/leases", &json!({"tool": tool, "tier": tier, "ttlSecs": ttl, "issuedBy": "attack-suite"}))
}

fn token(m: &Machina, tool: &str, tier: u8, ttl: u64) -> (String, String) {
    let (st, v) = issue(m, tool, tier, ttl);
    assert_eq!(st, 201, "{v}");
    (v["token"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
}

/// Run the recipe presenting `lease`; returns (final status, the task's error code).
fn run_with(m: &Machina, lease: &str, nonce: &str) -> (String, String) {
    let (st, v) =
        m.post("/enqueue", &json!({"goal": "t", "recipe": "leased", "inputs": {"lease": lease, "nonce": nonce}}));
    assert_eq!(st, 202, "{v}");
    let run = v["run"]["id"].as_str().unwrap().to_string();
    let done = m.wait_for(&run, "a final state", Duration::from_secs(60), |v| {
        ["succeeded", "failed", "retries_exceeded", "canceled"].contains(&v["status"].as_str().unwrap_or(""))
    });
    let code = done["tasks"][0]["errCode"].as_str().or(done["tasks"][0]["err_code"].as_str()).unwrap_or("").to_string();
    (done["status"].as_str().unwrap().to_string(), code)
}

fn denied(outcome: &(String, String)) -> bool {
    outcome.0 == "failed" && outcome.1 == "POLICY_DENIED"
}

#[test]
fn attack_suite() {
    let m = start();
    let mut t = Tally::default();

    // Control: a valid lease lets exactly one task run, bound to its task key.
    let (good, good_id) = token(&m, "shell", 2, 600);
    let ok = run_with(&m, &good, "control");
    assert_eq!(ok.0, "succeeded", "a valid lease must let the task run: {ok:?}");
    let consumed = m
        .sql_i64(&format!("SELECT count(*) FROM permission_leases WHERE id = '{good_id}' AND consumed_by IS NOT NULL"));
    assert_eq!(consumed, 1, "the lease is recorded as consumed");

    let none = run_with(&m, "", "no-lease");
    t.attack("tier-2 tool without a lease", denied(&none), format!("{none:?}"));

    let forged = format!("mpl_{}", "ab".repeat(32));
    let f = run_with(&m, &forged, "forged");
    t.attack("forged token", denied(&f), format!("{f:?}"));

    let reuse = run_with(&m, &good, "reuse");
    t.attack("reuse of a consumed lease by another task", denied(&reuse), format!("{reuse:?}"));

    let (http_token, _) = token(&m, "http", 2, 600);
    let wrong_tool = run_with(&m, &http_token, "wrong-tool");
    t.attack("lease issued for another tool", denied(&wrong_tool), format!("{wrong_tool:?}"));

    let (st, v) = issue(&m, "shell", 3, 600);
    t.attack("issuing a lease for the wrong tier", st == 400, format!("{st} {v}"));

    let (short, _) = token(&m, "shell", 2, 1);
    std::thread::sleep(Duration::from_millis(1300));
    let expired = run_with(&m, &short, "expired");
    t.attack("expired lease", denied(&expired), format!("{expired:?}"));

    let (revoked, revoked_id) = token(&m, "shell", 2, 600);
    let r = m.http.delete(m.url(&format!("/leases/{revoked_id}"))).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let rv = run_with(&m, &revoked, "revoked");
    t.attack("revoked lease", denied(&rv), format!("{rv:?}"));

    let before = m.sql_i64("SELECT count(*) FROM permission_leases");
    let st = m.http.post(m.url("/leases")).json(&json!({"tool": "shell", "tier": 2})).send().unwrap().status().as_u16();
    let after = m.sql_i64("SELECT count(*) FROM permission_leases");
    t.attack(
        "issuing a lease without credentials",
        st == 401 && before == after,
        format!("{st}, {before}→{after} rows"),
    );

    // The ledger holds hashes only: no row contains a token.
    let leaked =
        m.sql_i64(&format!("SELECT count(*) FROM permission_leases WHERE token_sha256 = '{good}' OR id = '{good}'"));
    t.attack("token readable from the ledger", leaked == 0, format!("{leaked} rows hold the raw token"));

    t.finish("leases");
    assert_eq!(t.tried, 9);
}
