//! Record and replay: each exchange stored as `<fixtures_dir>/<key>.json`, the key being the
//! SHA-256 of a canonical encoding of (provider kind, model, request body). The credential
//! and the provider's URL are not part of it, so fixtures survive a key rotation or a moved
//! endpoint, and a mock on a new port replays what a real provider answered.
//!
//! A fixture holds the raw response (status and body) and, for a person reviewing fixtures,
//! the request. Writes are atomic (a temp file in the same directory, then rename), so a
//! replay never sees half a fixture.

use machina_core::config::ProviderKind;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::error::CallError;
use super::transport::Raw;

/// One stored exchange.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    key: String,
    kind: ProviderKind,
    model: String,
    request: Value,
    status: u16,
    body: String,
}

/// The record/replay key of a request.
pub(crate) fn key(kind: ProviderKind, model: &str, body: &Value) -> String {
    let v = canonical(&json!({"kind": kind.as_str(), "model": model, "body": body}));
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// `value` with every object's keys in sorted order, whatever serde_json's map type.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), canonical(&m[k]))).collect::<Map<_, _>>())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The fixtures directory.
#[derive(Debug, Clone)]
pub(crate) struct FixtureStore {
    dir: PathBuf,
}

impl FixtureStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The stored response for `key`; a miss is [`CallError::NoFixture`].
    pub(crate) async fn load(&self, key: &str) -> Result<Raw, CallError> {
        let path = self.path(key);
        let text = match tokio::fs::read(&path).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CallError::NoFixture(key.into())),
            Err(e) => return Err(CallError::Fixture(format!("{}: {e}", path.display()))),
        };
        let f: Fixture = serde_json::from_slice(&text)
            .map_err(|e| CallError::Fixture(format!("{}: not a judge fixture: {e}", path.display())))?;
        if f.key != key {
            return Err(CallError::Fixture(format!("{}: holds the fixture of request {}", path.display(), f.key)));
        }
        Ok(Raw { status: f.status, body: f.body.into_bytes() })
    }

    /// Stores `raw` as the answer to `request`, replacing an older recording.
    pub(crate) async fn store(
        &self,
        key: &str,
        kind: ProviderKind,
        model: &str,
        request: &Value,
        raw: &Raw,
    ) -> Result<(), CallError> {
        let fixture = Fixture {
            key: key.into(),
            kind,
            model: model.into(),
            request: request.clone(),
            status: raw.status,
            // Answers are JSON, so UTF-8; anything else could not be parsed either way.
            body: String::from_utf8_lossy(&raw.body).into_owned(),
        };
        let mut text = serde_json::to_vec_pretty(&fixture).map_err(|e| CallError::Fixture(e.to_string()))?;
        text.push(b'\n');
        let (dir, path) = (self.dir.clone(), self.path(key));
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &path, &text))
            .await
            .map_err(|e| CallError::Fixture(format!("the writer task failed: {e}")))?
            .map_err(|e| CallError::Fixture(format!("{shown}: {e}")))
    }
}

/// Temp file in the same directory, fsync, rename: all of the fixture or none of it.
fn write_atomically(dir: &Path, path: &Path, text: &[u8]) -> std::io::Result<()> {
    // Prompts and answers may say more than the operator wants shown: owner only.
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_key_order_and_depends_on_kind_model_and_body() {
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": [1, {"d": 0, "c": 1}]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": {"a": [1, {"c": 1, "d": 0}], "b": 2}, "x": 1}"#).unwrap();
        let k = key(ProviderKind::Openai, "m", &a);
        assert_eq!(k, key(ProviderKind::Openai, "m", &b));
        assert_eq!(k.len(), 64);
        assert_ne!(k, key(ProviderKind::Anthropic, "m", &a));
        assert_ne!(k, key(ProviderKind::Openai, "n", &a));
        assert_ne!(k, key(ProviderKind::Openai, "m", &json!({"x": 2})));
    }

    #[tokio::test]
    async fn stored_fixtures_load_back_and_misses_are_named() {
        let d = tempfile::tempdir().unwrap();
        let store = FixtureStore::new(d.path().join("fx"));
        let k = key(ProviderKind::Anthropic, "m", &json!({}));
        let miss = store.load(&k).await.unwrap_err();
        assert_eq!(miss, CallError::NoFixture(k.clone()));
        assert!(miss.to_string().contains("judge.mode = \"record\""));
        let raw = Raw { status: 200, body: br#"{"content": []}"#.to_vec() };
        store.store(&k, ProviderKind::Anthropic, "m", &json!({}), &raw).await.unwrap();
        assert_eq!(store.load(&k).await.unwrap(), raw);
        let other = key(ProviderKind::Anthropic, "n", &json!({}));
        std::fs::copy(store.path(&k), store.path(&other)).unwrap();
        assert_eq!(store.load(&other).await.unwrap_err().kind(), "fixture_io", "a misplaced fixture is refused");
        let entries: Vec<_> = std::fs::read_dir(d.path().join("fx")).unwrap().collect();
        assert_eq!(entries.len(), 2, "no temp file left behind");
    }
}
