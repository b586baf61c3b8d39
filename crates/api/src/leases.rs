//! Issuing permission leases: the checks shared by `POST /v1/leases` and D-Bus `IssueLease`.

use machina_core::lease::{MAX_TIER, new_token, token_sha256};
use machina_ledger::{LeaseRecord, NewLease};
use serde::Serialize;

use crate::AppState;
use crate::error::ApiError;

/// Built-in tools (their tier is configuration; plugins carry theirs in their manifest).
const BUILTIN_TOOLS: [&str; 3] = ["shell", "http", "file"];

/// A lease just issued: the only time its token is shown.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// The single-use token the task presents (shown once, stored hashed).
    pub token: String,
    /// The stored lease.
    #[serde(flatten)]
    pub lease: LeaseRecord,
}

/// Check and issue a lease for `tool` at `tier`, valid `ttl_secs` (default from config).
pub async fn issue(
    st: &AppState,
    tool: &str,
    tier: u8,
    ttl_secs: Option<u64>,
    issued_by: &str,
) -> Result<Issued, ApiError> {
    let cfg = &st.settings.leases;
    let name_ok = !tool.is_empty()
        && tool.len() <= 64
        && tool.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(ApiError::invalid(format!("tool {tool:?} is not a tool name ([a-z0-9_-], 1-64 characters)")));
    }
    if tier > MAX_TIER {
        return Err(ApiError::invalid(format!("tier {tier} is out of range (0 safe … {MAX_TIER} privileged)")));
    }
    if tier <= cfg.free_tier {
        return Err(ApiError::invalid(format!(
            "tier {tier} needs no lease: tools up to tier {} (leases.free_tier) run without one",
            cfg.free_tier
        )));
    }
    if BUILTIN_TOOLS.contains(&tool) && cfg.tier_of(tool) != tier {
        return Err(ApiError::invalid(format!(
            "tool {tool:?} is tier {} (leases.tiers); a lease is bound to the tool's tier",
            cfg.tier_of(tool)
        )));
    }
    let ttl = ttl_secs.unwrap_or(cfg.default_ttl_secs);
    if ttl == 0 || ttl > cfg.max_ttl_secs {
        return Err(ApiError::invalid(format!(
            "ttl {ttl} s is out of range (1 … {} s, leases.max_ttl_secs)",
            cfg.max_ttl_secs
        )));
    }
    let who = issued_by.trim();
    if who.is_empty() || who.len() > 256 {
        return Err(ApiError::invalid("the issuer's name must be 1-256 characters"));
    }
    let token = new_token();
    let lease = st
        .ledger
        .issue_lease(NewLease {
            token_sha256: token_sha256(&token),
            tool: tool.to_string(),
            tier,
            issued_by: who.to_string(),
            ttl_ms: (ttl * 1000) as i64,
        })
        .await?;
    tracing::info!(lease_id = %lease.id, tool, tier, issued_by = who, ttl_secs = ttl, "permission lease issued");
    Ok(Issued { token, lease })
}
