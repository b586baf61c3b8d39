//! What this kernel and process can apply, probed without restricting anything: for the
//! worker's startup log and /health.

use landlock::{ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr, Scope};
use serde::Serialize;
use std::fmt;
use std::sync::OnceLock;

/// ABIs probed, newest first.
const PROBED_ABIS: [ABI; 6] = [ABI::V6, ABI::V5, ABI::V4, ABI::V3, ABI::V2, ABI::V1];

/// What the sandbox can enforce here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preflight {
    /// Highest landlock ABI this build knows and the kernel supports (0: none, max 6).
    pub landlock_abi: u8,
    /// Landlock can deny TCP bind/connect (ABI ≥ 4).
    pub landlock_network: bool,
    /// Landlock can scope signals and abstract unix sockets (ABI ≥ 6).
    pub landlock_scopes: bool,
    /// `PR_SET_NO_NEW_PRIVS` is available.
    pub no_new_privs: bool,
    /// The kernel has seccomp (not applied yet).
    pub seccomp_available: bool,
    /// The process holds CAP_SETPCAP, so the bounding set can be cleared.
    pub can_clear_bounding_set: bool,
    /// Capabilities in this process's effective set (tasks lose them all).
    pub effective_capabilities: usize,
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yn = |b: bool| if b { "yes" } else { "no" };
        write!(
            f,
            "landlock ABI {} (network {}, scopes {}), no_new_privs {}, seccomp {}, \
             bounding set clearable {}, effective capabilities {}",
            self.landlock_abi,
            yn(self.landlock_network),
            yn(self.landlock_scopes),
            yn(self.no_new_privs),
            yn(self.seccomp_available),
            yn(self.can_clear_bounding_set),
            self.effective_capabilities
        )
    }
}

/// Probe the kernel and this process.
pub fn preflight() -> Preflight {
    let abi = landlock_abi();
    let n = abi_number(abi);
    let effective = caps::read(None, caps::CapSet::Effective).map(|s| s.len()).unwrap_or(0);
    Preflight {
        landlock_abi: n,
        landlock_network: n >= 4,
        landlock_scopes: n >= 6,
        no_new_privs: nix::sys::prctl::get_no_new_privs().is_ok(),
        seccomp_available: std::fs::read_to_string("/proc/self/status")
            .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
            .unwrap_or(false),
        can_clear_bounding_set: caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SETPCAP)
            .unwrap_or(false),
        effective_capabilities: effective,
    }
}

/// The newest ABI whose every right the kernel supports (creating a ruleset, not enforcing it).
/// Probed once per process: the kernel's answer cannot change, and a spawner's children
/// inherit it instead of probing again before every exec.
pub(crate) fn landlock_abi() -> ABI {
    static ABI: OnceLock<ABI> = OnceLock::new();
    *ABI.get_or_init(|| PROBED_ABIS.into_iter().find(|&abi| supports(abi)).unwrap_or(ABI::Unsupported))
}

fn supports(abi: ABI) -> bool {
    let probe = || -> Result<(), landlock::RulesetError> {
        let mut r = Ruleset::default()
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(abi))?;
        if !AccessNet::from_all(abi).is_empty() {
            r = r.handle_access(AccessNet::from_all(abi))?;
        }
        if !Scope::from_all(abi).is_empty() {
            r = r.scope(Scope::from_all(abi))?;
        }
        r.create().map(drop)
    };
    probe().is_ok()
}

pub(crate) fn abi_number(abi: ABI) -> u8 {
    match abi {
        ABI::Unsupported => 0,
        ABI::V1 => 1,
        ABI::V2 => 2,
        ABI::V3 => 3,
        ABI::V4 => 4,
        ABI::V5 => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_is_consistent_and_displays() {
        let p = preflight();
        assert_eq!(p.landlock_network, p.landlock_abi >= 4);
        assert!(p.no_new_privs, "every supported kernel has PR_SET_NO_NEW_PRIVS");
        let text = p.to_string();
        assert!(text.contains(&format!("landlock ABI {}", p.landlock_abi)), "{text}");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["landlock_abi"], p.landlock_abi);
    }
}
