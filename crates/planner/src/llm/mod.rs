//! LLM backends under the judge model policy: ask configured models a question and get back
//! a validated JSON answer, with a [`Decision`] saying which model answered and what happened
//! to the others.
//!
//! For each question ([`Judge::ask`]):
//! 1. candidates are `judge.primary` then `judge.fallback`, minus `judge.deny`, restricted to
//!    `judge.allow` when it is not empty (`policy`); none left →
//!    [`JudgeFailure::PolicyBlocked`] (`AUTONOMY_JUDGE_POLICY_BLOCKED`), nothing sent;
//! 2. in live and record mode each candidate's credential is looked up by its provider's
//!    credential id (`credentials`); a candidate without one is skipped. When no candidate
//!    has one, strict mode fails closed and non-strict mode answers from fixtures instead;
//! 3. candidates are asked in order (`wire` for the two APIs, `transport` for timeouts,
//!    retries and caps, `fixtures` for record/replay); the first whose answer parses and
//!    passes the caller's validation wins. None → [`JudgeFailure::Unavailable`]
//!    (`AUTONOMY_JUDGE_UNAVAILABLE`).
//!
//! The credential never leaves the request headers: it is not logged, not part of the
//! fixture key, and scrubbed from any error text a provider might echo it in.

mod credentials;
mod decision;
mod error;
mod fixtures;
mod policy;
mod transport;
mod wire;

pub use decision::{Attempt, Decision, JudgeFailure, Skip, SkipReason};
pub use error::JudgeError;
pub use machina_core::config::{JudgeMode, JudgeSettings, ModelRef, ProviderKind};

use machina_core::config::ProviderSettings;
use reqwest::Url;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

use credentials::Credential;
use error::CallError;
use fixtures::FixtureStore;
use policy::Policy;
use transport::Transport;

/// One question for the judge.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JudgeRequest {
    /// What it is for, e.g. `"plan"`, `"arbitrate"`, `"chat-intent"` (recorded in the
    /// decision; also names the schema for OpenAI).
    pub purpose: String,
    /// The system prompt; an instruction to answer in JSON is appended to it.
    pub system: String,
    /// The user message.
    pub prompt: String,
    /// JSON Schema of the wanted answer, for the APIs' structured output. For OpenAI's
    /// strict mode it must close every object (`additionalProperties: false`, all
    /// properties required); Anthropic takes an object schema as a tool's input.
    pub schema: Option<Value>,
}

/// A validated answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged<T> {
    /// What the caller's validation made of the answer.
    pub value: T,
    /// The model that gave it, `"provider/model"`.
    pub model: String,
    /// The whole decision, for the run's events.
    pub decision: Decision,
}

/// A provider, ready to be asked.
#[derive(Debug, Clone)]
struct Provider {
    kind: ProviderKind,
    endpoint: Url,
    credential: String,
}

/// The judge: settings checked, HTTP client built. Cheap to share behind an `Arc`; every
/// question reads credentials afresh, so rotated files are picked up without a restart.
#[derive(Debug)]
pub struct Judge {
    settings: JudgeSettings,
    candidates: Vec<ModelRef>,
    policy: Policy,
    providers: BTreeMap<String, Provider>,
    credentials_dirs: Vec<PathBuf>,
    fixtures: FixtureStore,
    transport: Transport,
}

impl Judge {
    /// Builds a judge from validated settings.
    ///
    /// `credentials_dirs` are searched in order (systemd's `$CREDENTIALS_DIRECTORY` first,
    /// then `judge.credentials_dir`: see [`JudgeSettings::credentials_dirs`]); the library
    /// reads no environment. `fixtures_dir` is resolved by the caller
    /// ([`JudgeSettings::fixtures_dir`]) and only created when a fixture is recorded.
    pub fn new(
        settings: &JudgeSettings,
        credentials_dirs: Vec<PathBuf>,
        fixtures_dir: PathBuf,
    ) -> Result<Self, JudgeError> {
        settings.validate().map_err(|e| JudgeError::Settings(e.0))?;
        let candidates = settings.candidates().map_err(|e| JudgeError::Settings(e.0))?;
        let (allow, deny) = settings.patterns().map_err(|e| JudgeError::Settings(e.0))?;
        let providers = settings
            .providers
            .iter()
            .map(|p| Ok((p.id.clone(), provider(p, settings.strict)?)))
            .collect::<Result<_, JudgeError>>()?;
        Ok(Self {
            settings: settings.clone(),
            candidates,
            policy: Policy { allow, deny },
            providers,
            credentials_dirs,
            fixtures: FixtureStore::new(fixtures_dir),
            transport: Transport::new(settings)?,
        })
    }

    /// Whether a judge model is configured (`judge.primary` is set). Without one every
    /// question fails with [`JudgeFailure::Unavailable`].
    pub fn is_configured(&self) -> bool {
        self.settings.is_configured()
    }

    /// Asks the candidates in order until one gives an answer that `validate` accepts.
    ///
    /// `validate` turns the parsed JSON answer into `T`, or says why it is not acceptable;
    /// an unacceptable answer counts as that candidate's failure and the next is asked.
    pub async fn ask<T>(
        &self,
        req: &JudgeRequest,
        validate: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Judged<T>, JudgeFailure> {
        let mut decision = Decision::new(&req.purpose, self.settings.mode);
        if !self.is_configured() {
            return Err(JudgeFailure::Unavailable(decision));
        }
        let allowed = self.policy.filter(&self.candidates, &mut decision.skipped);
        if allowed.is_empty() {
            tracing::warn!(purpose = %req.purpose, "judge policy leaves no candidate");
            return Err(JudgeFailure::PolicyBlocked(decision));
        }
        for (candidate, credential) in self.with_credentials(allowed, &mut decision).await {
            let name = candidate.to_string();
            let outcome = self
                .answer(&candidate, credential.as_ref(), decision.mode, req)
                .await
                .and_then(|answer| validate(&answer).map_err(CallError::Invalid));
            match outcome {
                Ok(value) => {
                    tracing::info!(purpose = %req.purpose, model = %name, mode = decision.mode.as_str(),
                        failed = decision.failed.len(), skipped = decision.skipped.len(), "judge answered");
                    decision.chosen = Some(name.clone());
                    return Ok(Judged { value, model: name, decision });
                }
                Err(e) => {
                    let error = scrub(e.to_string(), credential.as_ref());
                    tracing::warn!(purpose = %req.purpose, model = %name, kind = e.kind(), %error, "judge candidate failed");
                    decision.failed.push(Attempt { candidate: name, kind: e.kind().into(), error });
                }
            }
        }
        Err(JudgeFailure::Unavailable(decision))
    }

    /// Pairs each candidate with its credential. Replay needs none. Without any credential,
    /// strict mode skips them all (fail closed) and non-strict mode switches to replay.
    async fn with_credentials(
        &self,
        allowed: Vec<ModelRef>,
        decision: &mut Decision,
    ) -> Vec<(ModelRef, Option<Credential>)> {
        if decision.mode == JudgeMode::Replay {
            return allowed.into_iter().map(|c| (c, None)).collect();
        }
        let mut found: BTreeMap<&str, Result<Credential, String>> = BTreeMap::new();
        for c in &allowed {
            let id = self.providers[&c.provider].credential.as_str();
            if !found.contains_key(id) {
                found.insert(id, credentials::find(&self.credentials_dirs, id).await);
            }
        }
        if found.values().all(Result::is_err) && !self.settings.strict {
            tracing::warn!(purpose = %decision.purpose, "no judge credentials found; answering from replay fixtures (judge.strict = false)");
            decision.mode = JudgeMode::Replay;
            decision.replay_fallback = true;
            return allowed.into_iter().map(|c| (c, None)).collect();
        }
        let mut ready = Vec::new();
        for c in allowed {
            match &found[self.providers[&c.provider].credential.as_str()] {
                Ok(cred) => ready.push((c, Some(cred.clone()))),
                Err(why) => decision.skipped.push(Skip {
                    candidate: c.to_string(),
                    reason: SkipReason::NoCredentials,
                    detail: Some(why.clone()),
                }),
            }
        }
        ready
    }

    /// One candidate's JSON answer: from the provider (live, record) or a fixture (replay).
    async fn answer(
        &self,
        candidate: &ModelRef,
        credential: Option<&Credential>,
        mode: JudgeMode,
        req: &JudgeRequest,
    ) -> Result<Value, CallError> {
        let provider = &self.providers[&candidate.provider];
        let body = wire::request_body(provider.kind, &candidate.model, req, self.settings.max_tokens);
        let key = fixtures::key(provider.kind, &candidate.model, &body);
        let raw = match (mode, credential) {
            (JudgeMode::Replay, _) | (_, None) => self.fixtures.load(&key).await?,
            (JudgeMode::Live | JudgeMode::Record, Some(credential)) => {
                let bytes = serde_json::to_vec(&body).expect("a JSON value serializes");
                if bytes.len() > self.settings.max_request_bytes {
                    return Err(CallError::TooLarge(format!(
                        "a request body of {} bytes is over the {}-byte limit (judge.max_request_bytes)",
                        bytes.len(),
                        self.settings.max_request_bytes
                    )));
                }
                let headers = wire::auth_headers(provider.kind, credential)?;
                let raw = self.transport.post(&provider.endpoint, &headers, &bytes).await?;
                if mode == JudgeMode::Record {
                    self.fixtures.store(&key, provider.kind, &candidate.model, &body, &raw).await?;
                }
                raw
            }
        };
        wire::answer(provider.kind, &raw)
    }
}

/// Checks a provider's endpoint; strict mode sends credentials over plain http to loopback only.
fn provider(p: &ProviderSettings, strict: bool) -> Result<Provider, JudgeError> {
    let key = format!("judge.providers[{}].base_url", p.id);
    let endpoint = wire::endpoint(p.kind, p.base_url()).map_err(|e| JudgeError::Settings(format!("{key}: {e}")))?;
    let loopback = endpoint.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if strict && endpoint.scheme() == "http" && !loopback {
        return Err(JudgeError::Settings(format!(
            "{key}: plain http would send the credential in the clear; use https (judge.strict allows http to loopback only)"
        )));
    }
    Ok(Provider { kind: p.kind, endpoint, credential: p.credential.clone() })
}

/// A provider may echo what it was sent; the key never goes into a decision.
fn scrub(text: String, credential: Option<&Credential>) -> String {
    match credential.map(Credential::expose).filter(|k| !k.is_empty()) {
        Some(k) if text.contains(k) => text.replace(k, "<redacted>"),
        _ => text,
    }
}
