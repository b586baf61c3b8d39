//! Permission leases: issue, list, revoke, consume (atomically, once) and expire.
//!
//! Tokens never reach the ledger: callers pass the token's sha256
//! ([`machina_core::lease::token_sha256`]).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::{Ledger, LedgerError, Result};

/// A lease as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRecord {
    /// Public id (for listing and revoking).
    pub id: String,
    /// Tool it lets one task use.
    pub tool: String,
    /// Tier it is bound to.
    pub tier: u8,
    /// Who issued it.
    pub issued_by: String,
    /// When, in ms since the epoch.
    pub issued_at_ms: i64,
    /// When it stops being usable.
    pub expires_at_ms: i64,
    /// When a task consumed it.
    pub consumed_at_ms: Option<i64>,
    /// The task_key of the task that consumed it.
    pub consumed_by: Option<String>,
    /// When an admin revoked it.
    pub revoked_at_ms: Option<i64>,
}

/// What an admin asks for.
#[derive(Debug, Clone)]
pub struct NewLease {
    /// sha256 of the token handed to the admin.
    pub token_sha256: String,
    /// Tool.
    pub tool: String,
    /// Tier.
    pub tier: u8,
    /// Issuer's name.
    pub issued_by: String,
    /// Lifetime.
    pub ttl_ms: i64,
}

const COLUMNS: &str =
    "id, tool, tier, issued_by, issued_at, expires_at, consumed_at, consumed_by, revoked_at, token_sha256";

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LeaseRecord, String)> {
    Ok((
        LeaseRecord {
            id: r.get(0)?,
            tool: r.get(1)?,
            tier: r.get(2)?,
            issued_by: r.get(3)?,
            issued_at_ms: r.get(4)?,
            expires_at_ms: r.get(5)?,
            consumed_at_ms: r.get(6)?,
            consumed_by: r.get(7)?,
            revoked_at_ms: r.get(8)?,
        },
        r.get(9)?,
    ))
}

impl Ledger {
    /// Store a new lease.
    pub async fn issue_lease(&self, l: NewLease) -> Result<LeaseRecord> {
        let id = uuid::Uuid::now_v7().to_string();
        self.writer
            .write(move |c, now| {
                c.prepare_cached(
                    "INSERT INTO permission_leases(id, token_sha256, tool, tier, issued_by, issued_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    id,
                    l.token_sha256,
                    l.tool,
                    l.tier,
                    l.issued_by,
                    now,
                    now + l.ttl_ms
                ])?;
                get(c, &id)
            })
            .await
    }

    /// Leases not yet expired (and, with `all`, also spent, revoked and expired ones not yet collected).
    pub async fn list_leases(&self, all: bool) -> Result<Vec<LeaseRecord>> {
        self.read(move |c, now| {
            let sql = format!(
                "SELECT {COLUMNS} FROM permission_leases
                 WHERE ?1 OR (expires_at > ?2 AND consumed_at IS NULL AND revoked_at IS NULL) ORDER BY id"
            );
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(params![all, now], |r| record(r).map(|(l, _)| l))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Revoke an unspent lease.
    pub async fn revoke_lease(&self, id: &str) -> Result<LeaseRecord> {
        let id = id.to_string();
        self.writer
            .write(move |c, now| {
                let l = get(c, &id)?;
                if l.consumed_at_ms.is_some() {
                    return Err(LedgerError::IllegalState(format!("lease {id} was already consumed")));
                }
                c.prepare_cached("UPDATE permission_leases SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")?
                    .execute(params![id, now])?;
                get(c, &id)
            })
            .await
    }

    /// Delete leases past their expiry, spent or not (maintenance); returns how many.
    pub async fn expire_leases(&self) -> Result<u64> {
        self.writer.write(expire_leases).await
    }

    /// Consume the lease whose token hashes to `token_sha256` for `tool` at `tier`, on behalf
    /// of task `task_key`: once, atomically. The same task (re-run after a crash) may
    /// present it again. Anything else is a `PolicyViolation` saying what was wrong.
    pub async fn consume_lease(&self, token_sha256: &str, tool: &str, tier: u8, task_key: &str) -> Result<LeaseRecord> {
        let (hash, tool, key) = (token_sha256.to_string(), tool.to_string(), task_key.to_string());
        self.writer.write(move |c, now| consume(c, &hash, &tool, tier, &key, now)).await
    }
}

fn get(c: &Connection, id: &str) -> Result<LeaseRecord> {
    c.prepare_cached(&format!("SELECT {COLUMNS} FROM permission_leases WHERE id = ?1"))?
        .query_row([id], |r| record(r).map(|(l, _)| l))
        .optional()?
        .ok_or_else(|| LedgerError::NotFound { what: "lease", id: id.to_string() })
}

fn consume(c: &Connection, hash: &str, tool: &str, tier: u8, key: &str, now: i64) -> Result<LeaseRecord> {
    let found = c
        .prepare_cached(&format!("SELECT {COLUMNS} FROM permission_leases WHERE token_sha256 = ?1"))?
        .query_row([hash], record)
        .optional()?;
    let deny = |m: String| Err(LedgerError::PolicyViolation(format!("permission lease refused: {m}")));
    let Some((l, _)) = found else {
        return deny("no such lease (unknown or forged token, or already collected)".into());
    };
    if l.tool != tool {
        return deny(format!("lease {} was issued for tool {:?}, not {tool:?}", l.id, l.tool));
    }
    if l.tier != tier {
        return deny(format!("lease {} was issued for tier {}, the tool is tier {tier}", l.id, l.tier));
    }
    if l.revoked_at_ms.is_some() {
        return deny(format!("lease {} was revoked", l.id));
    }
    match &l.consumed_by {
        Some(by) if by == key => return Ok(l),
        Some(_) => return deny(format!("lease {} was already used by another task", l.id)),
        None => {}
    }
    if l.expires_at_ms <= now {
        return deny(format!("lease {} expired", l.id));
    }
    // The guard repeats every check, so the row changes only if it is still unspent.
    let n = c
        .prepare_cached(
            "UPDATE permission_leases SET consumed_at = ?2, consumed_by = ?3
             WHERE id = ?1 AND consumed_at IS NULL AND revoked_at IS NULL AND expires_at > ?2",
        )?
        .execute(params![l.id, now, key])?;
    if n != 1 {
        return deny(format!("lease {} was consumed concurrently", l.id));
    }
    get(c, &l.id)
}

/// Delete leases past their expiry (spent or not); returns how many.
fn expire_leases(c: &Connection, now: i64) -> Result<u64> {
    Ok(c.prepare_cached("DELETE FROM permission_leases WHERE expires_at <= ?1")?.execute([now])? as u64)
}
