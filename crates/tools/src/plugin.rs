//! Plugins: external tool executables declared by manifest, pinned by sha256, and limited
//! to the capabilities they declare. This module is the pure policy side — reading the
//! manifests and deciding which plugins are usable; the worker runs one (machina-worker's
//! `plugin` module), always through the sandboxing wrapper with `--verify sha256:…`, so
//! the pin is checked again immediately before every exec.
//!
//! One TOML file per plugin in the plugins directory (`/etc/machina/plugins.d` when
//! installed; the caller passes the directory):
//!
//! ```toml
//! name = "resize"                       # [a-z0-9_-]+, not a built-in tool's name
//! path = "/usr/lib/machina/plugins/resize"
//! sha256 = "…64 lowercase hex digits…"
//! capabilities = ["FILE_READ", "FILE_WRITE"]  # missing: all five (see PluginPolicy)
//! tier = 2                               # 0..=3, default 3
//! description = "Resize images"
//! read_paths = ["/srv/images"]           # read-only, honoured only with FILE_READ
//! timeout_secs = 30
//! ```
//!
//! What each capability grants is enforced by the plugin's sandbox, not trusted from the
//! manifest: see [`CapSet`].

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Names of the built-in tools, which no plugin may take.
pub const BUILTIN_TOOLS: [&str; 3] = ["shell", "http", "file"];
/// Permission tier of a plugin whose manifest names none (the most restricted).
pub const DEFAULT_TIER: u8 = 3;
/// Highest tier.
pub const MAX_TIER: u8 = 3;
/// Longest plugin name.
const NAME_MAX_CHARS: usize = 64;
/// The kernel reads at most this much of a `#!` line (BINPRM_BUF_SIZE).
const SHEBANG_MAX_BYTES: usize = 256;

bitflags::bitflags! {
    /// Capabilities a plugin declares, each enforced by the sandbox the worker builds:
    ///
    /// - `FILE_READ`: the manifest's `read_paths` are readable (else none beyond the system's
    ///   libraries and the task directory).
    /// - `FILE_WRITE`: the task directory is writable (else read-only).
    /// - `SHELL`: the system's executables (/usr/bin…) may be executed and read (else only
    ///   the plugin itself, and its `#!` interpreter, may be executed).
    /// - `NETWORK`: TCP bind/connect allowed (else denied by landlock).
    /// - `MEMORY`: the address-space limit is the plugins' `memory_bytes` (else the normal
    ///   sandbox limit).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct CapSet: u8 {
        /// Read the manifest's `read_paths`.
        const FILE_READ = 1;
        /// Write in the task directory.
        const FILE_WRITE = 1 << 1;
        /// Execute the system's programs.
        const SHELL = 1 << 2;
        /// Open TCP connections and listen.
        const NETWORK = 1 << 3;
        /// Use the larger plugin memory limit.
        const MEMORY = 1 << 4;
    }
}

impl CapSet {
    /// The set named by `names` (e.g. `["FILE_READ", "NETWORK"]`); an unknown name is an
    /// error naming it and the valid ones.
    pub fn from_names<I, S>(names: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        names.into_iter().try_fold(Self::empty(), |set, n| {
            let n = n.as_ref();
            Self::from_name(n).map(|c| set | c).ok_or_else(|| {
                let valid: Vec<&str> = Self::all().iter_names().map(|(name, _)| name).collect();
                format!("unknown capability {n:?} (valid: {})", valid.join(", "))
            })
        })
    }
}

impl fmt::Display for CapSet {
    /// Comma-separated names, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter_names().map(|(n, _)| n).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for CapSet {
    type Err = String;

    /// Names separated by commas and/or whitespace; `none` or nothing is the empty set.
    fn from_str(s: &str) -> Result<Self, String> {
        let names = s.split(|c: char| c == ',' || c.is_whitespace()).filter(|n| !n.is_empty());
        let names: Vec<&str> = names.collect();
        if names == ["none"] { Ok(Self::empty()) } else { Self::from_names(names) }
    }
}

/// Which plugins are accepted.
#[derive(Debug, Clone)]
pub struct PluginPolicy {
    /// Directory of manifests (`*.toml`); missing means no plugins.
    pub dir: PathBuf,
    /// Capabilities a plugin may have; a plugin with any other is refused.
    pub allowed: CapSet,
    /// Accept a manifest without a `capabilities` list. Such a plugin has all five, so it
    /// must also fit `allowed`: the mask is never bypassed.
    pub allow_undeclared: bool,
}

/// A usable plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// Tool name tasks call it by.
    pub name: String,
    /// The executable (absolute).
    pub path: PathBuf,
    /// SHA-256 the executable must have at every exec.
    pub sha256: [u8; 32],
    /// Declared (and accepted) capabilities.
    pub caps: CapSet,
    /// Permission tier, 0..=3.
    pub tier: u8,
    /// What it does, for listings.
    pub description: Option<String>,
    /// Extra read-only paths, granted only with `FILE_READ`.
    pub read_paths: Vec<PathBuf>,
    /// The plugin's own wall-clock limit (a run uses the smaller of this and the task's).
    pub timeout_secs: Option<u64>,
    /// The `#!` interpreter when the executable is a script: the kernel executes it too,
    /// so the sandbox must let it (fixed by the pinned content).
    pub interpreter: Option<PathBuf>,
    /// The manifest it came from.
    pub source: PathBuf,
}

impl Plugin {
    /// The pinned digest as `--verify` wants it (`sha256:HEX`).
    pub fn verify_spec(&self) -> String {
        format!("sha256:{}", hex::encode(self.sha256))
    }
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The manifest (or the directory) cannot be read.
    #[error("cannot read: {0}")]
    Read(String),
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The name is not `[a-z0-9_-]+` (at most 64 characters).
    #[error("invalid name {0:?}: use 1 to 64 of a-z, 0-9, _ and -")]
    BadName(String),
    /// The name is a built-in tool's.
    #[error("name {0:?} is a built-in tool's (shell, http, file)")]
    BuiltinName(String),
    /// Another manifest already declares this name.
    #[error("duplicate plugin name {name:?}, already declared by {first}")]
    Duplicate {
        /// The name.
        name: String,
        /// The manifest that declared it first (in file name order).
        first: String,
    },
    /// A field's value is unusable.
    #[error("{field}: {message}")]
    BadField {
        /// The key.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No `capabilities` list and the policy does not accept that.
    #[error(
        "no capabilities list: an undeclared plugin has all capabilities and is refused \
         unless plugins allow_undeclared is set; declare what it needs"
    )]
    Undeclared,
    /// Capabilities beyond the allowed mask.
    #[error("capabilities {excess} exceed the allowed set ({allowed}){}", assumed_note(*.undeclared))]
    CapsExceed {
        /// The capabilities not allowed.
        excess: CapSet,
        /// The allowed mask.
        allowed: CapSet,
        /// The manifest had no list, so all were assumed.
        undeclared: bool,
    },
    /// The executable is missing, not a regular file, not executable or unreadable.
    #[error("executable {path}: {message}")]
    File {
        /// The executable.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The executable's content is not the pinned one.
    #[error("executable {path} has sha256 {actual}, the manifest pins {expected}")]
    HashMismatch {
        /// The executable.
        path: String,
        /// The manifest's digest.
        expected: String,
        /// The file's digest now.
        actual: String,
    },
}

fn assumed_note(undeclared: bool) -> &'static str {
    if undeclared { " (no capabilities list: all assumed)" } else { "" }
}

impl PluginError {
    /// Stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Read(_) => "plugin_read",
            Self::Manifest(_) => "plugin_manifest",
            Self::BadName(_) => "plugin_bad_name",
            Self::BuiltinName(_) => "plugin_builtin_name",
            Self::Duplicate { .. } => "plugin_duplicate",
            Self::BadField { .. } => "plugin_bad_field",
            Self::Undeclared => "plugin_caps_undeclared",
            Self::CapsExceed { .. } => "plugin_caps_exceed",
            Self::File { .. } => "plugin_file",
            Self::HashMismatch { .. } => "plugin_sha256_mismatch",
        }
    }
}

/// A manifest that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The manifest file (or the directory, when it cannot be listed).
    pub source: PathBuf,
    /// The plugin's name, when the manifest got that far.
    pub name: Option<String>,
    /// Why.
    pub reason: PluginError,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "plugin {n} ({}): {}", self.source.display(), self.reason),
            None => write!(f, "plugin manifest {}: {}", self.source.display(), self.reason),
        }
    }
}

/// The plugins of a directory: the usable ones by name, and the refused ones with reasons.
#[derive(Debug, Clone, Default)]
pub struct PluginCatalog {
    plugins: BTreeMap<String, Plugin>,
    refused: Vec<Refusal>,
}

impl PluginCatalog {
    /// The usable plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&Plugin> {
        self.plugins.get(name)
    }

    /// Every usable plugin, by name.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.values()
    }

    /// Every refused manifest, in file name order.
    pub fn refused(&self) -> &[Refusal] {
        &self.refused
    }
}

/// The manifest as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: String,
    path: PathBuf,
    sha256: String,
    capabilities: Option<Vec<String>>,
    tier: Option<u8>,
    description: Option<String>,
    read_paths: Option<Vec<PathBuf>>,
    timeout_secs: Option<u64>,
}

/// Load every `*.toml` manifest of `policy.dir` (in file name order; hidden files are
/// skipped). Blocking: reads and hashes every executable, so call it at startup or from
/// `spawn_blocking`. The caller logs what was loaded and refused.
pub fn load(policy: &PluginPolicy) -> PluginCatalog {
    let mut catalog = PluginCatalog::default();
    let entries = match std::fs::read_dir(&policy.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return catalog,
        Err(e) => {
            let error = PluginError::Read(e.to_string());
            catalog.refused.push(Refusal { source: policy.dir.clone(), name: None, reason: error });
            return catalog;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            p.extension().is_some_and(|x| x == "toml") && !name.starts_with('.')
        })
        .collect();
    files.sort();
    let mut claimed: BTreeMap<String, PathBuf> = BTreeMap::new();
    for source in files {
        match load_one(policy, &source, &mut claimed) {
            Ok(p) => {
                catalog.plugins.insert(p.name.clone(), p);
            }
            Err((name, reason)) => catalog.refused.push(Refusal { source, name, reason }),
        }
    }
    catalog
}

type Refused = (Option<String>, PluginError);

fn load_one(policy: &PluginPolicy, source: &Path, claimed: &mut BTreeMap<String, PathBuf>) -> Result<Plugin, Refused> {
    let text = std::fs::read_to_string(source).map_err(|e| (None, PluginError::Read(e.to_string())))?;
    let m: Manifest = toml::from_str(&text).map_err(|e| (None, PluginError::Manifest(e.to_string().trim().into())))?;
    let name = m.name.clone();
    let named = |e: PluginError| (Some(name.clone()), e);
    check_name(&m.name).map_err(named)?;
    // The first manifest to name a plugin keeps it, even if it is refused later: two files
    // claiming one name is a mistake to fix, not a fallback.
    if let Some(first) = claimed.get(&m.name) {
        return Err(named(PluginError::Duplicate { name: m.name.clone(), first: first.display().to_string() }));
    }
    claimed.insert(m.name.clone(), source.to_path_buf());
    let sha256 = check_fields(&m).map_err(named)?;
    let caps = check_caps(policy, m.capabilities.as_deref()).map_err(named)?;
    let read_paths = m.read_paths.unwrap_or_default();
    if !read_paths.is_empty() && !caps.contains(CapSet::FILE_READ) {
        tracing::warn!(plugin = %m.name, "read_paths ignored: the plugin does not declare FILE_READ");
    }
    let interpreter = check_file(&m.path, &sha256).map_err(named)?;
    Ok(Plugin {
        name: m.name,
        path: m.path,
        sha256,
        caps,
        tier: m.tier.unwrap_or(DEFAULT_TIER),
        description: m.description,
        read_paths,
        timeout_secs: m.timeout_secs,
        interpreter,
        source: source.to_path_buf(),
    })
}

fn check_name(name: &str) -> Result<(), PluginError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if name.is_empty() || name.chars().count() > NAME_MAX_CHARS || !name.chars().all(ok_char) {
        return Err(PluginError::BadName(name.into()));
    }
    if BUILTIN_TOOLS.contains(&name) {
        return Err(PluginError::BuiltinName(name.into()));
    }
    Ok(())
}

/// Validate the plain fields; returns the parsed digest.
fn check_fields(m: &Manifest) -> Result<[u8; 32], PluginError> {
    let bad = |field, message: &str| PluginError::BadField { field, message: message.into() };
    if !m.path.is_absolute() {
        return Err(bad("path", "must be an absolute path"));
    }
    let hex_ok = m.sha256.len() == 64 && m.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut sha256 = [0u8; 32];
    if !hex_ok || hex::decode_to_slice(&m.sha256, &mut sha256).is_err() {
        return Err(bad("sha256", "must be 64 lowercase hex digits"));
    }
    if m.tier.is_some_and(|t| t > MAX_TIER) {
        return Err(bad("tier", "must be 0 to 3"));
    }
    if m.timeout_secs == Some(0) {
        return Err(bad("timeout_secs", "must be at least 1"));
    }
    if let Some(p) = m.read_paths.iter().flatten().find(|p| !p.is_absolute()) {
        return Err(bad("read_paths", &format!("{} is not an absolute path", p.display())));
    }
    Ok(sha256)
}

fn check_caps(policy: &PluginPolicy, declared: Option<&[String]>) -> Result<CapSet, PluginError> {
    let (caps, undeclared) = match declared {
        Some(names) => {
            let caps = CapSet::from_names(names)
                .map_err(|message| PluginError::BadField { field: "capabilities", message })?;
            (caps, false)
        }
        None if policy.allow_undeclared => (CapSet::all(), true),
        None => return Err(PluginError::Undeclared),
    };
    let excess = caps - policy.allowed;
    if !excess.is_empty() {
        return Err(PluginError::CapsExceed { excess, allowed: policy.allowed, undeclared });
    }
    Ok(caps)
}

/// Hash the executable and compare with the pin; returns its `#!` interpreter, if any.
fn check_file(path: &Path, expected: &[u8; 32]) -> Result<Option<PathBuf>, PluginError> {
    let shown = path.display().to_string();
    let file_err = |message: String| PluginError::File { path: shown.clone(), message };
    let mut f = std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?;
    let meta = f.metadata().map_err(|e| file_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(file_err("not a regular file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(file_err("not executable (no x permission bit)".into()));
    }
    let (actual, head) = hash_with_head(&mut f).map_err(|e| file_err(e.to_string()))?;
    if !bool::from(actual[..].ct_eq(&expected[..])) {
        return Err(PluginError::HashMismatch {
            path: shown,
            expected: hex::encode(expected),
            actual: hex::encode(actual),
        });
    }
    interpreter(&head).map_err(file_err)
}

/// The SHA-256 of the file at `path`: what a manifest's `sha256` must be. Blocking.
pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    hash_with_head(&mut std::fs::File::open(path)?).map(|(digest, _)| digest)
}

/// The digest of everything `r` yields, and its first bytes (enough for a `#!` line).
fn hash_with_head(r: &mut impl Read) -> std::io::Result<([u8; 32], Vec<u8>)> {
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(SHEBANG_MAX_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let room = SHEBANG_MAX_BYTES.saturating_sub(head.len());
        head.extend_from_slice(&buf[..n.min(room)]);
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finalize().into(), head))
}

/// The interpreter named by a `#!` line (None: not a script).
fn interpreter(head: &[u8]) -> Result<Option<PathBuf>, String> {
    let Some(rest) = head.strip_prefix(b"#!") else { return Ok(None) };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "the #! line is not UTF-8".to_string())?;
    let Some(interp) = line.split_whitespace().next() else { return Err("the #! line names no interpreter".into()) };
    if !interp.starts_with('/') {
        return Err(format!("the #! interpreter {interp:?} must be an absolute path"));
    }
    Ok(Some(PathBuf::from(interp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir {
        _tmp: tempfile::TempDir,
        manifests: PathBuf,
        bin: PathBuf,
    }

    impl Dir {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let manifests = tmp.path().join("plugins.d");
            let bin = tmp.path().join("bin");
            std::fs::create_dir(&manifests).unwrap();
            std::fs::create_dir(&bin).unwrap();
            Self { _tmp: tmp, manifests, bin }
        }

        /// An executable with `content`; returns its path and hex digest.
        fn exe(&self, name: &str, content: &str) -> (PathBuf, String) {
            let p = self.bin.join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            (p, hex::encode(Sha256::digest(content)))
        }

        fn manifest(&self, file: &str, body: &str) {
            std::fs::write(self.manifests.join(file), body).unwrap();
        }

        /// A manifest for a fresh script called `name` with `extra` lines.
        fn plugin(&self, name: &str, extra: &str) {
            let (path, sha) = self.exe(name, &format!("#!/bin/sh -e\necho {name}\n"));
            self.manifest(
                &format!("{name}.toml"),
                &format!("name = \"{name}\"\npath = \"{}\"\nsha256 = \"{sha}\"\n{extra}\n", path.display()),
            );
        }

        fn load(&self, allowed: CapSet, allow_undeclared: bool) -> PluginCatalog {
            load(&PluginPolicy { dir: self.manifests.clone(), allowed, allow_undeclared })
        }
    }

    fn refusal<'a>(c: &'a PluginCatalog, file: &str) -> &'a PluginError {
        &c.refused()
            .iter()
            .find(|r| r.source.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not refused: {c:?}"))
            .reason
    }

    #[test]
    fn capsets_parse_and_display() {
        let c: CapSet = "FILE_READ, NETWORK".parse().unwrap();
        assert_eq!(c, CapSet::FILE_READ | CapSet::NETWORK);
        assert_eq!(c.to_string(), "FILE_READ,NETWORK");
        assert_eq!(CapSet::all().to_string().parse::<CapSet>().unwrap(), CapSet::all());
        assert_eq!("none".parse::<CapSet>().unwrap(), CapSet::empty());
        assert_eq!(CapSet::empty().to_string(), "none");
        let e = CapSet::from_names(["SHELL", "ROOT"]).unwrap_err();
        assert!(e.contains("\"ROOT\"") && e.contains("MEMORY"), "{e}");
    }

    #[test]
    fn a_good_manifest_loads_with_its_fields() {
        let d = Dir::new();
        d.plugin(
            "resize",
            "capabilities = [\"FILE_READ\", \"FILE_WRITE\"]\ntier = 1\ndescription = \"d\"\n\
             read_paths = [\"/srv\"]\ntimeout_secs = 9",
        );
        d.manifest("notes.txt", "not a manifest");
        let c = d.load(CapSet::all(), false);
        assert!(c.refused().is_empty(), "{:?}", c.refused());
        let p = c.get("resize").unwrap();
        assert_eq!(p.caps, CapSet::FILE_READ | CapSet::FILE_WRITE);
        assert_eq!((p.tier, p.timeout_secs, p.description.as_deref()), (1, Some(9), Some("d")));
        assert_eq!(p.read_paths, [PathBuf::from("/srv")]);
        assert_eq!(p.interpreter.as_deref(), Some(Path::new("/bin/sh")));
        assert!(p.verify_spec().starts_with("sha256:") && p.verify_spec().len() == 71);
        assert_eq!(c.plugins().count(), 1);
        // Defaults: tier 3, and an ELF has no interpreter.
        let d = Dir::new();
        let (path, sha) = d.exe("elf", "\x7fELF not really");
        d.manifest(
            "elf.toml",
            &format!("name = \"elf\"\npath = \"{}\"\nsha256 = \"{sha}\"\ncapabilities = []", path.display()),
        );
        let c = d.load(CapSet::empty(), false);
        let p = c.get("elf").unwrap();
        assert_eq!((p.tier, p.caps, p.interpreter.as_ref()), (DEFAULT_TIER, CapSet::empty(), None));
    }

    #[test]
    fn a_missing_directory_is_an_empty_catalog() {
        let c = load(&PluginPolicy {
            dir: "/nonexistent/plugins.d".into(),
            allowed: CapSet::all(),
            allow_undeclared: true,
        });
        assert_eq!((c.plugins().count(), c.refused().len()), (0, 0));
    }

    #[test]
    fn capabilities_must_fit_the_mask_and_be_declared() {
        let d = Dir::new();
        d.plugin("net", "capabilities = [\"NETWORK\", \"SHELL\", \"FILE_READ\"]");
        d.plugin("undeclared", "");
        d.plugin("typo", "capabilities = [\"NETWRK\"]");
        let c = d.load(CapSet::FILE_READ, false);
        let e = refusal(&c, "net.toml");
        assert_eq!(e.kind(), "plugin_caps_exceed");
        assert!(e.to_string().contains("capabilities SHELL,NETWORK exceed the allowed set (FILE_READ)"), "{e}");
        assert_eq!(refusal(&c, "undeclared.toml").kind(), "plugin_caps_undeclared");
        assert!(refusal(&c, "typo.toml").to_string().contains("unknown capability \"NETWRK\""));
        // Undeclared plugins need the switch, and still the mask.
        let c = d.load(CapSet::all(), false);
        assert_eq!(refusal(&c, "undeclared.toml").kind(), "plugin_caps_undeclared");
        let c = d.load(CapSet::FILE_READ, true);
        assert!(refusal(&c, "undeclared.toml").to_string().contains("all assumed"));
        let c = d.load(CapSet::all(), true);
        assert_eq!(c.get("undeclared").map(|p| p.caps), Some(CapSet::all()));
    }

    #[test]
    fn bad_manifests_are_refused_with_reasons() {
        let d = Dir::new();
        d.plugin("shell", "capabilities = []");
        d.plugin("Bad.Name", "capabilities = []");
        d.plugin("extra", "capabilities = []\nsetuid = true");
        d.plugin("tier", "capabilities = []\ntier = 4");
        d.plugin("zero", "capabilities = []\ntimeout_secs = 0");
        d.plugin("rel", "capabilities = [\"FILE_READ\"]\nread_paths = [\"srv\"]");
        d.manifest("broken.toml", "name = ");
        d.manifest(
            "relpath.toml",
            &format!("name = \"relpath\"\npath = \"bin/x\"\nsha256 = \"{}\"\ncapabilities = []", "0".repeat(64)),
        );
        d.manifest("shortsha.toml", "name = \"shortsha\"\npath = \"/bin/true\"\nsha256 = \"abc\"\ncapabilities = []");
        let c = d.load(CapSet::all(), false);
        assert_eq!(c.plugins().count(), 0, "{:?}", c.plugins().collect::<Vec<_>>());
        assert_eq!(refusal(&c, "shell.toml").kind(), "plugin_builtin_name");
        assert_eq!(refusal(&c, "Bad.Name.toml").kind(), "plugin_bad_name");
        let e = refusal(&c, "extra.toml");
        assert!(e.kind() == "plugin_manifest" && e.to_string().contains("setuid"), "{e}");
        assert!(refusal(&c, "tier.toml").to_string().starts_with("tier:"));
        assert!(refusal(&c, "zero.toml").to_string().starts_with("timeout_secs:"));
        assert!(refusal(&c, "rel.toml").to_string().starts_with("read_paths:"));
        assert_eq!(refusal(&c, "broken.toml").kind(), "plugin_manifest");
        assert!(refusal(&c, "relpath.toml").to_string().starts_with("path:"));
        assert!(refusal(&c, "shortsha.toml").to_string().starts_with("sha256:"));
        let shown = c.refused().iter().find(|r| r.source.ends_with("shell.toml")).unwrap().to_string();
        assert!(shown.starts_with("plugin shell (") && shown.contains("built-in"), "{shown}");
    }

    #[test]
    fn the_executable_must_exist_match_its_pin_and_be_unique() {
        let d = Dir::new();
        d.plugin("tampered", "capabilities = []");
        std::fs::write(d.bin.join("tampered"), "#!/bin/sh\necho evil\n").unwrap();
        d.plugin("gone", "capabilities = []");
        std::fs::remove_file(d.bin.join("gone")).unwrap();
        d.plugin("noexec", "capabilities = []");
        std::fs::set_permissions(d.bin.join("noexec"), std::fs::Permissions::from_mode(0o644)).unwrap();
        d.plugin("a-first", "capabilities = []");
        let first = std::fs::read_to_string(d.manifests.join("a-first.toml")).unwrap();
        d.manifest("b-second.toml", &first);
        let c = d.load(CapSet::all(), false);
        let e = refusal(&c, "tampered.toml");
        assert_eq!(e.kind(), "plugin_sha256_mismatch");
        assert!(e.to_string().contains("the manifest pins"), "{e}");
        assert_eq!(refusal(&c, "gone.toml").kind(), "plugin_file");
        assert!(refusal(&c, "noexec.toml").to_string().contains("not executable"));
        assert!(c.get("a-first").is_some_and(|p| p.source.ends_with("a-first.toml")));
        let e = refusal(&c, "b-second.toml");
        assert!(e.kind() == "plugin_duplicate" && e.to_string().contains("a-first.toml"), "{e}");
    }

    #[test]
    fn shebang_lines() {
        assert_eq!(interpreter(b"#!/bin/sh -e\nx").unwrap(), Some(PathBuf::from("/bin/sh")));
        assert_eq!(interpreter(b"#! /usr/bin/python3\n").unwrap(), Some(PathBuf::from("/usr/bin/python3")));
        assert_eq!(interpreter(b"\x7fELF").unwrap(), None);
        assert!(interpreter(b"#!sh\n").is_err());
        assert!(interpreter(b"#!\n").is_err());
    }
}
