//! Idempotent submission: a request id's first response is replayed within its TTL.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::error::{LedgerError, Result};
use crate::model::{IntentRecord, RunRecord};
use crate::runs::{NewIntent, NewRun, create_intent, start_run};

/// Identifies a submission for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// The client's request id.
    pub request_id: String,
    /// sha256 of the request (method, path and body): a reused id with another request is a conflict.
    pub request_sha256: String,
    /// How long the response is replayed.
    pub ttl_ms: i64,
}

/// What to create.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    /// An intent alone.
    Intent(NewIntent),
    /// A run of an existing intent.
    Run(NewRun),
    /// An intent and its run at once (`intent_id` of the run is filled in).
    Enqueue(NewIntent, NewRun),
}

/// The response to a submission, fresh or replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// HTTP status of the original response.
    pub status: u16,
    /// Body of the original response.
    pub body: Value,
    /// True when this is a replay.
    pub replayed: bool,
}

fn created(s: Submission, c: &Connection, now: i64) -> Result<(u16, Value)> {
    let intent_json = |i: &IntentRecord| serde_json::to_value(i);
    let run_json = |r: &RunRecord| serde_json::to_value(r);
    Ok(match s {
        Submission::Intent(i) => (201, intent_json(&create_intent(c, i, now)?)?),
        Submission::Run(r) => (202, run_json(&start_run(c, r, false, now)?)?),
        Submission::Enqueue(i, mut r) => {
            let intent = create_intent(c, i, now)?;
            r.intent_id = intent.id.clone();
            let run = start_run(c, r, true, now)?;
            (202, serde_json::json!({"intent": intent_json(&intent)?, "run": run_json(&run)?}))
        }
    })
}

pub(crate) fn submit(c: &Connection, key: Option<&DedupKey>, s: Submission, now: i64) -> Result<Submitted> {
    if let Some(k) = key {
        let hit: Option<(String, u16, String)> = c
            .prepare_cached(
                "SELECT body_sha256, status, response FROM dedup WHERE request_id = ?1 AND expires_at > ?2",
            )?
            .query_row(params![k.request_id, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((sha, status, response)) = hit {
            if sha != k.request_sha256 {
                return Err(LedgerError::Conflict(format!(
                    "request id {:?} was already used for a different request; use a new request id",
                    k.request_id
                )));
            }
            return Ok(Submitted { status, body: serde_json::from_str(&response)?, replayed: true });
        }
    }
    let (status, body) = created(s, c, now)?;
    if let Some(k) = key {
        c.prepare_cached(
            "INSERT INTO dedup(request_id, body_sha256, status, response, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(request_id) DO UPDATE SET body_sha256 = excluded.body_sha256, status = excluded.status,
               response = excluded.response, created_at = excluded.created_at, expires_at = excluded.expires_at",
        )?
        .execute(params![k.request_id, k.request_sha256, status, body.to_string(), now, now + k.ttl_ms])?;
    }
    Ok(Submitted { status, body, replayed: false })
}
