//! Applying a [`SandboxSpec`] to the calling process (the wrapper or a spawner's child,
//! just before exec).

use crate::loaders::dynamic_loaders_cached;
use crate::preflight::{abi_number, landlock_abi};
use crate::{Required, Rlimits, SandboxSpec};
use caps::CapSet;
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::stat::SFlag;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Why the sandbox could not be applied at all.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The task directory cannot be opened for the landlock rule.
    #[error("task directory {path}: {message}")]
    TaskDir {
        /// The directory.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Building or enforcing the landlock ruleset failed.
    #[error("landlock: {0}")]
    Landlock(String),
}

impl SandboxError {
    /// Stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TaskDir { .. } => "sandbox_task_dir",
            Self::Landlock(_) => "sandbox_landlock",
        }
    }
}

/// What is in force after [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The process leads a new session (and process group).
    pub new_session: bool,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Every rlimit was set; failures are listed in `notes`.
    pub rlimits: bool,
    /// Landlock ABI used (0: landlock unavailable).
    pub landlock_abi: u8,
    /// The filesystem ruleset is fully enforced.
    pub landlock: bool,
    /// TCP bind/connect denied by landlock.
    pub network_denied: bool,
    /// Signals and abstract unix sockets scoped to the sandbox.
    pub scoped: bool,
    /// Effective, permitted, inheritable and ambient sets are empty.
    pub capabilities_cleared: bool,
    /// The bounding set is empty (needs CAP_SETPCAP; with `no_new_privs` and an empty
    /// permitted set, exec cannot regain capabilities either way).
    pub bounding_set_cleared: bool,
    /// What could not be applied, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// The protections `required` demands that are not in force (empty: all are).
    pub fn missing(&self, required: &Required, network_allowed: bool) -> Vec<&'static str> {
        let mut m = Vec::new();
        if required.landlock && !self.landlock {
            m.push("landlock");
        }
        if required.network_denied && !network_allowed && !self.network_denied {
            m.push("network_denied");
        }
        if required.no_new_privs && !self.no_new_privs {
            m.push("no_new_privs");
        }
        if required.rlimits && !self.rlimits {
            m.push("rlimits");
        }
        let caps_gone = self.capabilities_cleared && (self.bounding_set_cleared || self.no_new_privs);
        if required.no_capabilities && !caps_gone {
            m.push("no_capabilities");
        }
        m
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "landlock={} (ABI {}) network_denied={} scoped={} no_new_privs={} rlimits={} \
             capabilities_cleared={} bounding_set_cleared={} new_session={}",
            self.landlock,
            self.landlock_abi,
            self.network_denied,
            self.scoped,
            self.no_new_privs,
            self.rlimits,
            self.capabilities_cleared,
            self.bounding_set_cleared,
            self.new_session
        )?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// Confine the calling process as `spec` says. Best effort: the [`Report`] tells what is in
/// force; an error means the spec itself could not be honoured (no task directory).
pub fn apply(spec: &SandboxSpec) -> Result<Report, SandboxError> {
    // A spawner's idle child made its session ahead (setsid costs tens of microseconds).
    let new_session = nix::unistd::setsid().is_ok() || leads_own_session();
    let mut r = Report { new_session, ..Report::default() };
    r.rlimits = set_rlimits(&spec.rlimits, &mut r.notes);
    drop_capabilities(&mut r);
    match nix::sys::prctl::set_no_new_privs() {
        Ok(()) => r.no_new_privs = true,
        Err(e) => r.notes.push(format!("no_new_privs: {e}")),
    }
    restrict_landlock(spec, &mut r)?;
    Ok(r)
}

fn leads_own_session() -> bool {
    nix::unistd::getsid(None).is_ok_and(|sid| sid == nix::unistd::getpid())
}

/// Directories and device nodes opened (O_PATH) by a spawner's idle child while it waits
/// for a request: [`restrict_landlock`] takes them instead of opening the same paths
/// again. Not regular files: /etc/ld.so.cache is replaced on updates while a child may
/// wait, a directory or device node is not, so the rules are those of fresh opens.
static OPENED_AHEAD: Mutex<Vec<(PathBuf, PathFd, bool)>> = Mutex::new(Vec::new());

/// Open ahead those of `paths` that are directories or device nodes (see [`OPENED_AHEAD`]).
pub(crate) fn open_ahead<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    let mut opened = OPENED_AHEAD.lock().unwrap_or_else(PoisonError::into_inner);
    for p in paths {
        if opened.iter().any(|(q, ..)| q == p) {
            continue;
        }
        let Ok(fd) = PathFd::new(p) else { continue };
        let Ok(st) = nix::sys::stat::fstat(&fd) else { continue };
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFDIR || kind == SFlag::S_IFCHR {
            opened.push((p.to_path_buf(), fd, kind == SFlag::S_IFDIR));
        }
    }
}

/// Rules granting `access` beneath each of `paths` that exists, as landlock's
/// `path_beneath_rules` builds them (a non-directory gets only the file rights), from the
/// paths opened ahead where there are.
fn beneath<'a>(
    paths: impl IntoIterator<Item = &'a PathBuf>,
    access: BitFlags<AccessFs>,
    abi: ABI,
) -> Vec<Result<PathBeneath<PathFd>, landlock::RulesetError>> {
    let mut ahead = OPENED_AHEAD.lock().unwrap_or_else(PoisonError::into_inner);
    let mut take = |p: &Path| {
        let i = ahead.iter().position(|(q, ..)| q == p)?;
        let (_, fd, is_dir) = ahead.swap_remove(i);
        Some((fd, is_dir))
    };
    let open = |p: &Path| {
        let fd = PathFd::new(p).ok()?;
        // As landlock's: if the stat fails, rely on the access asked for.
        let is_dir = nix::sys::stat::fstat(&fd)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
            .unwrap_or(true);
        Some((fd, is_dir))
    };
    let file_access = access & AccessFs::from_file(abi);
    paths
        .into_iter()
        .filter_map(|p| take(p).or_else(|| open(p)))
        .map(|(fd, is_dir)| Ok(PathBeneath::new(fd, if is_dir { access } else { file_access })))
        .collect()
}

fn set_rlimits(l: &Rlimits, notes: &mut Vec<String>) -> bool {
    let wanted = [
        (Resource::RLIMIT_CPU, l.cpu_secs, "cpu"),
        (Resource::RLIMIT_AS, l.address_space_bytes, "address_space"),
        (Resource::RLIMIT_FSIZE, l.file_size_bytes, "file_size"),
        (Resource::RLIMIT_NOFILE, l.open_files, "open_files"),
        (Resource::RLIMIT_NPROC, l.processes, "processes"),
    ];
    let mut all = true;
    for (res, value, name) in wanted {
        // Never above the current hard limit: raising it needs CAP_SYS_RESOURCE.
        let value = getrlimit(res).map(|(_, hard)| value.min(hard)).unwrap_or(value);
        if let Err(e) = setrlimit(res, value, value) {
            notes.push(format!("rlimit {name}: {e}"));
            all = false;
        }
    }
    all
}

/// What [`drop_own_capabilities`] achieved in this process, inherited by its forked
/// children: capabilities can be dropped but never regained without an exec, so a child
/// doing the same steps would reach the same state. It skips them (some fifty syscalls,
/// most of a spawn's capability cost) and reports this outcome.
static INHERITED_CAPABILITIES: OnceLock<Report> = OnceLock::new();

/// Drop every capability this process can (the bounding set too, given CAP_SETPCAP), as
/// [`apply`] does, and remember the outcome for the children it forks. For the spawner,
/// which needs none: its children then start without any.
pub(crate) fn drop_own_capabilities() {
    let mut r = Report::default();
    drop_capabilities(&mut r);
    let _ = INHERITED_CAPABILITIES.set(r);
}

fn drop_capabilities(r: &mut Report) {
    if let Some(done) = INHERITED_CAPABILITIES.get() {
        r.capabilities_cleared = done.capabilities_cleared;
        r.bounding_set_cleared = done.bounding_set_cleared;
        r.notes.extend(done.notes.iter().cloned());
        return;
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, gone once effective is cleared.
    let mut bounding_cleared = false;
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP).unwrap_or(false) {
        match caps::clear(None, CapSet::Bounding) {
            Ok(()) => bounding_cleared = true,
            Err(e) => r.notes.push(format!("bounding set: {e}")),
        }
    }
    for set in [CapSet::Ambient, CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        if let Err(e) = caps::clear(None, set) {
            r.notes.push(format!("capabilities {set:?}: {e}"));
        }
    }
    let empty = |set| caps::read(None, set).map(|s| s.is_empty()).unwrap_or(false);
    // The kernel keeps ambient within permitted ∩ inheritable: both empty means ambient is.
    r.capabilities_cleared = [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted].into_iter().all(empty);
    r.bounding_set_cleared = bounding_cleared || empty(CapSet::Bounding);
}

fn restrict_landlock(spec: &SandboxSpec, r: &mut Report) -> Result<(), SandboxError> {
    let abi = landlock_abi();
    r.landlock_abi = abi_number(abi);
    if abi == ABI::Unsupported {
        r.notes.push("landlock: not supported by this kernel".into());
        return Ok(());
    }
    let task_dir = PathFd::new(&spec.task_dir)
        .map_err(|e| SandboxError::TaskDir { path: spec.task_dir.display().to_string(), message: e.to_string() })?;
    let ll = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let mut rs = Ruleset::default().handle_access(AccessFs::from_all(abi)).map_err(ll)?;
    let deny_net = !spec.network && !AccessNet::from_all(abi).is_empty();
    if deny_net {
        rs = rs.handle_access(AccessNet::from_all(abi)).map_err(ll)?;
    }
    let scoped = !Scope::from_all(abi).is_empty();
    if scoped {
        rs = rs.scope(Scope::from_all(abi)).map_err(ll)?;
    }
    let rights = Rights::new(spec, abi);
    let exec_paths = spec.exec_paths.iter().flatten().cloned().chain(rights.loaders());
    let exec_paths: Vec<_> = exec_paths.collect();
    let status = rs
        .create()
        .and_then(|c| c.add_rules(beneath(&spec.read_only, rights.read, abi)))
        .and_then(|c| c.add_rules(beneath(&exec_paths, AccessFs::from_read(abi), abi)))
        .and_then(|c| c.add_rules(beneath(&spec.devices, rights.devices, abi)))
        .and_then(|c| c.add_rule(PathBeneath::new(task_dir, rights.task_dir)))
        .and_then(|c| c.restrict_self())
        .map_err(ll)?;
    let full = status.ruleset == RulesetStatus::FullyEnforced;
    if !full {
        r.notes.push(format!("landlock: {:?}", status.ruleset));
    }
    r.landlock = full;
    r.network_denied = full && deny_net;
    r.scoped = full && scoped;
    r.no_new_privs |= status.no_new_privs;
    Ok(())
}

/// The filesystem rights each kind of rule grants.
struct Rights {
    read: BitFlags<AccessFs>,
    devices: BitFlags<AccessFs>,
    task_dir: BitFlags<AccessFs>,
    exec_restricted: bool,
}

impl Rights {
    fn new(spec: &SandboxSpec, abi: ABI) -> Self {
        // With exec_paths, nothing else may be executed: not the read-only roots, not
        // devices, and not what the task wrote into its own directory.
        let exec_restricted = spec.exec_paths.is_some();
        let no_exec = |a: BitFlags<AccessFs>| if exec_restricted { a & !BitFlags::from(AccessFs::Execute) } else { a };
        let task_dir = if spec.task_dir_writable { AccessFs::from_all(abi) } else { AccessFs::from_read(abi) };
        Self {
            read: no_exec(AccessFs::from_read(abi)),
            devices: no_exec(AccessFs::from_file(abi)),
            task_dir: no_exec(task_dir),
            exec_restricted,
        }
    }

    /// The loaders to make executable: only needed when execution is restricted.
    fn loaders(&self) -> Vec<PathBuf> {
        if self.exec_restricted { dynamic_loaders_cached().to_vec() } else { Vec::new() }
    }
}
