//! A real machina API on a loopback port over a real ledger in a temp dir.

#![allow(dead_code)]

use machina_api::AppState;
use machina_core::RecipeBook;
use machina_core::config::Settings;
use machina_ledger::{Ledger, LedgerOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub struct Server {
    pub base: String,
    pub ledger: Ledger,
    pub settings: Settings,
    pub http: reqwest::Client,
    pub shutdown: CancellationToken,
    pub dir: tempfile::TempDir,
}

pub async fn start() -> Server {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
    start_with_recipes(&[], tweak).await
}

/// A server whose recipe book has the built-ins plus `recipes` (file name, TOML).
pub async fn start_with_recipes(recipes: &[(&str, &str)], tweak: impl FnOnce(&mut Settings)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let recipe_dir = dir.path().join("recipes.d");
    std::fs::create_dir_all(&recipe_dir).unwrap();
    for (name, text) in recipes {
        std::fs::write(recipe_dir.join(format!("{name}.toml")), text).unwrap();
    }
    let mut settings =
        Settings { state_dir: dir.path().join("state"), recipe_dirs: vec![recipe_dir], ..Settings::default() };
    settings.worker.poll_ms = 20;
    tweak(&mut settings);
    let ledger = Ledger::open(LedgerOptions::new(&settings.state_dir)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let state = AppState {
        ledger: ledger.clone(),
        recipes: Arc::new(RecipeBook::load(&settings.recipe_dirs).unwrap()),
        settings: Arc::new(settings.clone()),
        auth: Arc::new(machina_api::auth::Auth::token(TOKEN)),
        shutdown: shutdown.clone(),
        activity: machina_api::activity::Activity::new(),
        bus: None,
        limiter: machina_api::ratelimit::Limiter::new(settings.api.rate_limit_per_sec, settings.api.rate_limit_burst),
    };
    tokio::spawn(machina_api::daemon::serve(listener, state, shutdown.clone()));
    Server { base, ledger, settings, http: reqwest::Client::new(), shutdown, dir }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(TOKEN).header("content-type", "application/json")
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(TOKEN)
    }

    /// Send and return (status, JSON body).
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// An artifact's bytes as text.
    pub async fn artifact_text(&self, sha: &serde_json::Value) -> String {
        let sha = sha.as_str().expect("a sha256 string");
        self.get(&format!("/artifacts/{sha}")).send().await.unwrap().text().await.unwrap()
    }

    /// POST /enqueue of the demo recipe; returns the run id.
    pub async fn enqueue_demo(&self, words: &[&str]) -> String {
        let body = json!({"goal": "greet", "inputs": {"words": words}, "recipe": "demo", "queuePartitionKey": "p1"});
        let (status, v) = self.send(self.post("/enqueue").json(&body)).await;
        assert_eq!(status, 202, "{v}");
        v["run"]["id"].as_str().unwrap().to_string()
    }

    /// Start an in-process worker (real child processes for tasks).
    pub fn spawn_worker(&self, id: &str) -> CancellationToken {
        self.spawn_worker_slots(id, 1)
    }

    /// Start an in-process worker with `slots` slots (one process's slots share cancellations).
    pub fn spawn_worker_slots(&self, id: &str, slots: usize) -> CancellationToken {
        let stop = CancellationToken::new();
        let w = machina_worker::Worker::new(id.into(), self.ledger.clone(), self.recipes(), self.settings.clone());
        tokio::spawn(w.run(slots, stop.clone()));
        stop
    }

    /// The recipe book workers of this server use.
    pub fn recipes(&self) -> RecipeBook {
        RecipeBook::load(&self.settings.recipe_dirs).unwrap()
    }

    /// Poll GET /runs/{id} until its status is one of `want`.
    pub async fn wait_status(&self, run: &str, want: &[&str]) -> Value {
        for _ in 0..1000 {
            let (_, v) = self.send(self.get(&format!("/runs/{run}"))).await;
            if want.contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("run {run} never reached {want:?}");
    }
}
