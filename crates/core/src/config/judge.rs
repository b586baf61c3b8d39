//! `[judge]`: the LLM providers, the judge model policy (primary, fallbacks, allow and deny
//! lists), where credentials are found, the mode (live, record, replay) and the per-call caps.
//!
//! Settings name credentials by id only; the secret itself lives in a file that systemd
//! hands over (`LoadCredential=`) or in a root-only directory, so the effective
//! configuration can be printed without hiding anything but the id.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Credential id a provider uses when it names none.
pub const DEFAULT_CREDENTIAL_ID: &str = "machina-judge";

/// Where the fixtures of record/replay live, under the state directory, unless
/// `judge.fixtures_dir` says otherwise.
pub const DEFAULT_FIXTURES_SUBDIR: &str = "judge-fixtures";

/// The LLM judge and planner settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeSettings {
    /// `"live"` calls the provider; `"record"` calls it and stores every exchange as a
    /// fixture; `"replay"` answers only from fixtures (no network, no credentials).
    pub mode: JudgeMode,
    /// Fail closed: a candidate without credentials is never replaced by fixtures, and a
    /// provider may not be reached over plain http except on loopback. Prod sets it.
    pub strict: bool,
    /// The model asked first, `"<provider id>/<model>"`; empty means no judge is configured.
    pub primary: String,
    /// Models asked, in this order, when the ones before them did not answer validly.
    pub fallback: Vec<String>,
    /// When not empty, only candidates matching one of these are asked: exact
    /// `"provider/model"` or `"provider/*"` (every model of that provider).
    pub allow: Vec<String>,
    /// Candidates matching one of these are never asked (same syntax as `allow`); deny wins.
    pub deny: Vec<String>,
    /// The root-only directory searched for a credential file after systemd's
    /// `$CREDENTIALS_DIRECTORY`: `<credentials_dir>/<credential id>`.
    pub credentials_dir: PathBuf,
    /// Where record/replay fixtures live (default: `<state_dir>/judge-fixtures`).
    pub fixtures_dir: Option<PathBuf>,
    /// Limit on one HTTP exchange with a provider (connect, request, whole response); a
    /// `Retry-After` longer than this is cut to it.
    pub timeout_ms: u64,
    /// Retries of one candidate after a 429, a 5xx or a failed connection, before the next
    /// candidate is asked.
    pub max_retries: u32,
    /// Backoff before the first retry (doubles each time, jittered) when the provider sends
    /// no `Retry-After`.
    pub backoff_base_ms: u64,
    /// Most tokens one answer may use (sent to the provider as `max_tokens`).
    pub max_tokens: u32,
    /// Largest request body sent; a larger prompt is refused before anything is sent.
    pub max_request_bytes: usize,
    /// Largest response body read; reading stops as soon as it passes this.
    pub max_response_bytes: usize,
    /// The providers candidates may name.
    pub providers: Vec<ProviderSettings>,
}

impl Default for JudgeSettings {
    fn default() -> Self {
        Self {
            mode: JudgeMode::Live,
            strict: false,
            primary: String::new(),
            fallback: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            credentials_dir: PathBuf::from("/etc/machina/credentials"),
            fixtures_dir: None,
            timeout_ms: 20_000,
            max_retries: 2,
            backoff_base_ms: 250,
            max_tokens: 1024,
            max_request_bytes: 256 << 10,
            max_response_bytes: 256 << 10,
            providers: Vec::new(),
        }
    }
}

/// How the judge gets its answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JudgeMode {
    /// Ask the provider.
    #[default]
    Live,
    /// Ask the provider and store each exchange as a fixture.
    Record,
    /// Answer only from stored fixtures.
    Replay,
}

impl JudgeMode {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Record => "record",
            Self::Replay => "replay",
        }
    }
}

/// Which API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible chat completions (`POST <base_url>/chat/completions`).
    Openai,
    /// Anthropic messages (`POST <base_url>/messages`).
    Anthropic,
}

impl ProviderKind {
    /// The setting's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    /// The public endpoint of the kind's reference API.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Openai => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com/v1",
        }
    }
}

/// One `[[judge.providers]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The name candidates use (`[a-z0-9_-]+`), as in `"<id>/<model>"`.
    pub id: String,
    /// `"openai"` (chat completions) or `"anthropic"` (messages).
    pub kind: ProviderKind,
    /// API root, e.g. `https://api.openai.com/v1` (default: the kind's public API).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Id of the credential holding the API key: the file `$CREDENTIALS_DIRECTORY/<id>`,
    /// else `<credentials_dir>/<id>`. Changing it migrates the provider to another
    /// credential; give each provider its own when you configure more than one.
    #[serde(default = "default_credential")]
    pub credential: String,
}

fn default_credential() -> String {
    DEFAULT_CREDENTIAL_ID.into()
}

impl ProviderSettings {
    /// The API root requests go to.
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(self.kind.default_base_url())
    }
}

/// A candidate model: `"<provider id>/<model>"`. The model may itself contain `/`
/// (OpenAI-compatible routers name models like `meta-llama/llama-3`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModelRef {
    /// A `[[judge.providers]]` id.
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
}

impl ModelRef {
    /// Parses `"provider/model"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (provider, model) = split_ref(text)?;
        if model == "*" {
            return Err(format!("{text:?} is a pattern, not a model; name one model"));
        }
        Ok(Self { provider: provider.into(), model: model.into() })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// An allow or deny entry: one model, or every model of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPattern {
    /// `"provider/model"`.
    Exact(ModelRef),
    /// `"provider/*"`.
    Provider(String),
}

impl ModelPattern {
    /// Parses `"provider/model"` or `"provider/*"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (provider, model) = split_ref(text)?;
        Ok(if model == "*" {
            Self::Provider(provider.into())
        } else {
            Self::Exact(ModelRef { provider: provider.into(), model: model.into() })
        })
    }

    /// Whether `candidate` matches.
    pub fn matches(&self, candidate: &ModelRef) -> bool {
        match self {
            Self::Exact(m) => m == candidate,
            Self::Provider(p) => *p == candidate.provider,
        }
    }

    fn provider(&self) -> &str {
        match self {
            Self::Exact(m) => &m.provider,
            Self::Provider(p) => p,
        }
    }
}

fn split_ref(text: &str) -> Result<(&str, &str), String> {
    let Some((provider, model)) = text.split_once('/') else {
        return Err(format!("{text:?} is not \"<provider id>/<model>\""));
    };
    if !is_provider_id(provider) {
        return Err(format!("{text:?}: provider id {provider:?} must be made of a-z, 0-9, '_' and '-'"));
    }
    if model.is_empty() || model.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?}: the model name must be non-empty, without spaces"));
    }
    Ok((provider, model))
}

fn is_provider_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A credential id is a file name in a credentials directory: no path, no hidden file.
fn is_credential_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

impl JudgeSettings {
    /// Whether a judge model is configured at all.
    pub fn is_configured(&self) -> bool {
        !self.primary.is_empty()
    }

    /// The candidates in the order they are tried: primary, then the fallbacks, each once.
    /// Fails only on settings that [`JudgeSettings::validate`] refuses.
    pub fn candidates(&self) -> Result<Vec<ModelRef>, ConfigError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let named = std::iter::once(("judge.primary", &self.primary)).filter(|(_, p)| !p.is_empty());
        for (key, text) in named.chain(self.fallback.iter().map(|f| ("judge.fallback", f))) {
            let m = ModelRef::parse(text).map_err(|e| ConfigError(format!("{key}: {e}")))?;
            if seen.insert(m.clone()) {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The parsed allow and deny lists.
    pub fn patterns(&self) -> Result<(Vec<ModelPattern>, Vec<ModelPattern>), ConfigError> {
        let parse = |key: &str, list: &[String]| {
            list.iter()
                .map(|p| ModelPattern::parse(p).map_err(|e| ConfigError(format!("{key}: {e}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((parse("judge.allow", &self.allow)?, parse("judge.deny", &self.deny)?))
    }

    /// The provider with id `id`.
    pub fn provider(&self, id: &str) -> Option<&ProviderSettings> {
        self.providers.iter().find(|p| p.id == id)
    }

    /// Where fixtures live: `judge.fixtures_dir`, else `<state_dir>/judge-fixtures`.
    pub fn fixtures_dir(&self, state_dir: &Path) -> PathBuf {
        self.fixtures_dir.clone().unwrap_or_else(|| state_dir.join(DEFAULT_FIXTURES_SUBDIR))
    }

    /// Directories searched for credential files, in order: the `$CREDENTIALS_DIRECTORY`
    /// systemd handed over (the caller reads the environment), then `judge.credentials_dir`.
    pub fn credentials_dirs(&self, systemd_credentials_directory: Option<&str>) -> Vec<PathBuf> {
        systemd_credentials_directory
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .chain(std::iter::once(self.credentials_dir.clone()))
            .collect()
    }

    /// Checks every rule; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let mut ids = BTreeSet::new();
        for p in &self.providers {
            if !is_provider_id(&p.id) {
                return bad(format!("judge.providers: id {:?} must be made of a-z, 0-9, '_' and '-'", p.id));
            }
            if !ids.insert(p.id.as_str()) {
                return bad(format!("judge.providers: id {:?} is declared twice", p.id));
            }
            if !is_credential_id(&p.credential) {
                return bad(format!(
                    "judge.providers[{}].credential: {:?} must be a file name (letters, digits, '_', '-', '.', '@')",
                    p.id, p.credential
                ));
            }
            let url = p.base_url();
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
                return bad(format!("judge.providers[{}].base_url: {url:?} is not an http(s) URL", p.id));
            }
        }
        if self.primary.is_empty() && !self.fallback.is_empty() {
            return bad("judge.fallback is set but judge.primary is empty: name the model asked first".into());
        }
        let named = std::iter::once(("judge.primary", &self.primary)).filter(|(_, p)| !p.is_empty());
        for (key, text) in named.chain(self.fallback.iter().map(|f| ("judge.fallback", f))) {
            let m = ModelRef::parse(text).map_err(|e| ConfigError(format!("{key}: {e}")))?;
            if !ids.contains(m.provider.as_str()) {
                return bad(format!("{key}: provider {:?} is not declared in [[judge.providers]]", m.provider));
            }
        }
        let (allow, deny) = self.patterns()?;
        for (key, list) in [("judge.allow", &allow), ("judge.deny", &deny)] {
            if let Some(p) = list.iter().find(|p| !ids.contains(p.provider())) {
                return bad(format!("{key}: provider {:?} is not declared in [[judge.providers]]", p.provider()));
            }
        }
        if !self.credentials_dir.is_absolute() {
            return bad(format!("judge.credentials_dir: {} is not an absolute path", self.credentials_dir.display()));
        }
        if let Some(d) = self.fixtures_dir.as_ref().filter(|d| !d.is_absolute()) {
            return bad(format!("judge.fixtures_dir: {} is not an absolute path", d.display()));
        }
        if self.timeout_ms == 0 || self.max_tokens == 0 {
            return bad("judge.timeout_ms and judge.max_tokens must be at least 1".into());
        }
        if self.max_retries > 10 {
            return bad("judge.max_retries must be at most 10".into());
        }
        if self.backoff_base_ms > self.timeout_ms {
            return bad("judge.backoff_base_ms must not exceed judge.timeout_ms".into());
        }
        if self.max_request_bytes < 1024 || self.max_response_bytes < 1024 {
            return bad("judge.max_request_bytes and judge.max_response_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn load(text: &str) -> Result<Settings, ConfigError> {
        crate::config::load_text(text)
    }

    const PROVIDERS: &str = "[[judge.providers]]\nid = 'openai'\nkind = 'openai'\n\
        [[judge.providers]]\nid = 'anthropic'\nkind = 'anthropic'\ncredential = 'machina-judge-anthropic'\n";

    fn err(text: &str) -> String {
        load(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_configure_no_judge_and_are_valid() {
        let s = load("").unwrap();
        assert!(!s.judge.is_configured());
        assert_eq!(s.judge.mode, JudgeMode::Live);
        assert!(s.judge.candidates().unwrap().is_empty());
    }

    #[test]
    fn a_full_section_loads() {
        let s = load(&format!(
            "[judge]\nmode = 'record'\nstrict = true\nprimary = 'openai/gpt-4o-mini'\n\
             fallback = ['anthropic/claude-3-5-haiku-latest', 'openai/gpt-4o-mini', 'router/meta/llama']\n\
             allow = ['openai/*', 'anthropic/claude-3-5-haiku-latest']\ndeny = ['router/*']\n\
             [[judge.providers]]\nid = 'router'\nkind = 'openai'\nbase_url = 'http://127.0.0.1:9/v1'\n{}",
            PROVIDERS
        ))
        .unwrap();
        let j = &s.judge;
        assert_eq!(j.mode, JudgeMode::Record);
        let names: Vec<String> = j.candidates().unwrap().iter().map(|m| m.to_string()).collect();
        assert_eq!(names, ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-latest", "router/meta/llama"]);
        assert_eq!(j.provider("openai").unwrap().credential, DEFAULT_CREDENTIAL_ID);
        assert_eq!(j.provider("openai").unwrap().base_url(), "https://api.openai.com/v1");
        assert_eq!(j.provider("router").unwrap().base_url(), "http://127.0.0.1:9/v1");
        let (allow, deny) = j.patterns().unwrap();
        assert!(allow[0].matches(&ModelRef::parse("openai/x").unwrap()));
        assert!(deny[0].matches(&ModelRef::parse("router/meta/llama").unwrap()));
    }

    #[test]
    fn unknown_provider_in_a_candidate_or_list_is_refused() {
        let e = err(&format!("[judge]\nprimary = 'mistral/large'\n{PROVIDERS}"));
        assert!(e.contains("judge.primary") && e.contains("mistral"), "{e}");
        let e = err(&format!("[judge]\nprimary = 'openai/a'\nfallback = ['nope/b']\n{PROVIDERS}"));
        assert!(e.contains("judge.fallback") && e.contains("nope"), "{e}");
        let e = err(&format!("[judge]\nprimary = 'openai/a'\ndeny = ['opnai/*']\n{PROVIDERS}"));
        assert!(e.contains("judge.deny") && e.contains("opnai"), "{e}");
    }

    #[test]
    fn bad_model_syntax_is_refused() {
        for (bad, key) in [
            ("primary = 'gpt-4o'", "judge.primary"),
            ("primary = 'openai/'", "judge.primary"),
            ("primary = 'OpenAI/gpt'", "judge.primary"),
            ("primary = 'openai/*'", "judge.primary"),
            ("primary = 'openai/a b'", "judge.primary"),
            ("primary = 'openai/a'\nallow = ['openai']", "judge.allow"),
            ("fallback = ['openai/a']", "judge.fallback"),
        ] {
            let e = err(&format!("[judge]\n{bad}\n{PROVIDERS}"));
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn provider_entries_are_checked() {
        let dup = "[[judge.providers]]\nid = 'openai'\nkind = 'anthropic'\n";
        let e = err(&format!("{PROVIDERS}{dup}"));
        assert!(e.contains("judge.providers") && e.contains("twice"), "{e}");
        let e = err("[[judge.providers]]\nid = 'x'\nkind = 'openai'\ncredential = '../etc/shadow'\n");
        assert!(e.contains("judge.providers[x].credential"), "{e}");
        let e = err("[[judge.providers]]\nid = 'x'\nkind = 'openai'\nbase_url = 'ftp://h'\n");
        assert!(e.contains("judge.providers[x].base_url"), "{e}");
        let e = err("[[judge.providers]]\nid = 'x'\nkind = 'gemini'\n");
        assert!(e.contains("gemini"), "{e}");
    }

    #[test]
    fn limits_and_paths_are_checked() {
        for (bad, key) in [
            ("mode = 'dream'", "dream"),
            ("timeout_ms = 0", "judge.timeout_ms"),
            ("max_retries = 11", "judge.max_retries"),
            ("backoff_base_ms = 30000", "judge.backoff_base_ms"),
            ("max_response_bytes = 10", "judge.max_request_bytes"),
            ("credentials_dir = 'creds'", "judge.credentials_dir"),
            ("fixtures_dir = 'fx'", "judge.fixtures_dir"),
        ] {
            let e = err(&format!("[judge]\n{bad}\n"));
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn directories_resolve_in_order() {
        let j = JudgeSettings::default();
        assert_eq!(j.fixtures_dir(Path::new("/var/lib/machina")), Path::new("/var/lib/machina/judge-fixtures"));
        assert_eq!(
            j.credentials_dirs(Some("/run/credentials/machina.service")),
            [PathBuf::from("/run/credentials/machina.service"), PathBuf::from("/etc/machina/credentials")]
        );
        assert_eq!(j.credentials_dirs(Some("")), [PathBuf::from("/etc/machina/credentials")]);
    }
}
