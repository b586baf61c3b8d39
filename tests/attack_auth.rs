//! Attack suite: API authentication (`api.auth = "both"` and `"hmac"`). Every forged,
//! stale, replayed or altered request is refused with 401 and writes nothing.

mod common;

use common::{Machina, TOKEN};
use serde_json::json;
use std::process::Command;

const SECRET: &str = "attack-suite-secret-0123456789abcdef0123";

struct Signed {
    ts: String,
    nonce: String,
    sig: String,
}

/// Sign with the real `machinactl sign`.
fn sign(m: &Machina, method: &str, path: &str, body: &str) -> Signed {
    let body_file = m.dir.path().join(format!("body-{}", rand_suffix()));
    std::fs::write(&body_file, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_machinactl"))
        .args(["sign", "--secret-file"])
        .arg(m.dir.path().join("hmac"))
        .args(["--method", method, "--path", path, "--body"])
        .arg(&body_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let get = |h: &str| text.lines().find_map(|l| l.strip_prefix(h)).unwrap().to_string();
    Signed { ts: get("X-Machina-Ts: "), nonce: get("X-Machina-Nonce: "), sig: get("X-Machina-Signature: ") }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn send(m: &Machina, token: Option<&str>, s: Option<&Signed>, path: &str, body: &str) -> u16 {
    let mut rb = m.http.post(m.url(path)).header("content-type", "application/json").body(body.to_string());
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(s) = s {
        rb = rb.header("x-machina-ts", &s.ts).header("x-machina-nonce", &s.nonce).header("x-machina-signature", &s.sig);
    }
    rb.send().unwrap().status().as_u16()
}

fn start(mode: &str) -> Machina {
    let mut m = Machina::new("");
    std::fs::write(m.dir.path().join("hmac"), SECRET).unwrap();
    let conf =
        format!("[api]\nauth = \"{mode}\"\nhmac_secret_file = {:?}\nhmac_ttl_secs = 60\n", m.dir.path().join("hmac"));
    std::fs::write(m.dir.path().join("config.d/60-auth.toml"), conf).unwrap();
    m.start_api();
    m
}

#[test]
fn attack_suite_auth() {
    let m = start("both");
    let body = json!({"goal": "g", "recipe": "demo", "inputs": {"words": ["x"]}}).to_string();
    let mut tried = 0;
    let mut blocked = 0;
    let mut attack = |name: &str, status: u16| {
        tried += 1;
        if status == 401 {
            blocked += 1;
        } else {
            eprintln!("NOT BLOCKED: {name}: HTTP {status}");
        }
    };
    let good = sign(&m, "POST", "/enqueue", &body);
    attack("no credentials", send(&m, None, None, "/enqueue", &body));
    attack("token only (both required)", send(&m, Some(TOKEN), None, "/enqueue", &body));
    attack("signature only (both required)", send(&m, None, Some(&good), "/enqueue", &body));
    attack("wrong token", send(&m, Some("wrong-token-0123456789"), Some(&good), "/enqueue", &body));
    let forged = Signed { sig: format!("v1={}", "ab".repeat(32)), ..sign(&m, "POST", "/enqueue", &body) };
    attack("forged signature", send(&m, Some(TOKEN), Some(&forged), "/enqueue", &body));
    let changed = sign(&m, "POST", "/enqueue", &body);
    attack(
        "body changed after signing",
        send(&m, Some(TOKEN), Some(&changed), "/enqueue", &body.replace("\"x\"", "\"y\"")),
    );
    let other_path = sign(&m, "POST", "/intents", &body);
    attack("signature for another path", send(&m, Some(TOKEN), Some(&other_path), "/enqueue", &body));
    let mut stale = sign(&m, "POST", "/enqueue", &body);
    let old_ts = (stale.ts.parse::<i64>().unwrap() - 3600).to_string();
    // Re-sign with the old timestamp (a correct signature, expired).
    stale.sig =
        machina_core::signing::sign(SECRET.as_bytes(), &old_ts, &stale.nonce, "POST", "/enqueue", body.as_bytes());
    stale.ts = old_ts;
    attack("expired timestamp", send(&m, Some(TOKEN), Some(&stale), "/enqueue", &body));
    let bad_nonce = Signed { nonce: "short".into(), ..sign(&m, "POST", "/enqueue", &body) };
    attack("malformed nonce", send(&m, Some(TOKEN), Some(&bad_nonce), "/enqueue", &body));
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM runs"), 0, "nothing was written by refused requests");

    // The genuine request passes once; its replay is refused, also after a restart.
    assert_eq!(send(&m, Some(TOKEN), Some(&good), "/enqueue", &body), 202);
    attack("replayed nonce", send(&m, Some(TOKEN), Some(&good), "/enqueue", &body));
    let mut m = m;
    m.kill9_api();
    m.start_api();
    attack("replayed nonce after a restart", send(&m, Some(TOKEN), Some(&good), "/enqueue", &body));
    assert_eq!(m.sql_i64("SELECT COUNT(*) FROM runs"), 1, "only the genuine request wrote");
    eprintln!("attack-suite auth: {tried} tried, {blocked} blocked");
    assert_eq!(tried, blocked);
}

#[test]
fn hmac_alone_accepts_signed_requests_and_refuses_bearer_tokens() {
    let m = start("hmac");
    let body = json!({"goal": "g", "recipe": "demo", "inputs": {"words": ["x"]}}).to_string();
    assert_eq!(send(&m, Some(TOKEN), None, "/enqueue", &body), 401);
    let s = sign(&m, "POST", "/enqueue", &body);
    assert_eq!(send(&m, None, Some(&s), "/enqueue", &body), 202);
}
