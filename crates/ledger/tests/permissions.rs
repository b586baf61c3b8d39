//! Permission leases in the ledger: consumed once, bound to tool and tier, refused when
//! expired or revoked, presented again only by the task that consumed it, collected after
//! expiry.

mod common;

use common::TestLedger;
use machina_core::lease::{new_token, token_sha256};
use machina_ledger::{LedgerError, NewLease};

async fn issue(t: &TestLedger, tool: &str, tier: u8, ttl_ms: i64) -> (String, String) {
    let token = new_token();
    let l = t
        .ledger
        .issue_lease(NewLease {
            token_sha256: token_sha256(&token),
            tool: tool.into(),
            tier,
            issued_by: "admin".into(),
            ttl_ms,
        })
        .await
        .unwrap();
    (token, l.id)
}

fn refused(r: Result<machina_ledger::LeaseRecord, LedgerError>, why: &str) {
    match r {
        Err(LedgerError::PolicyViolation(m)) => assert!(m.contains(why), "{m:?} should say {why:?}"),
        other => panic!("expected a refusal saying {why:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_lease_is_consumed_once_and_bound_to_tool_and_tier() {
    let t = TestLedger::new();
    let (token, id) = issue(&t, "http", 2, 60_000).await;
    let h = token_sha256(&token);
    refused(t.ledger.consume_lease(&h, "shell", 2, "k1").await, "issued for tool");
    refused(t.ledger.consume_lease(&h, "http", 3, "k1").await, "tier");
    let l = t.ledger.consume_lease(&h, "http", 2, "k1").await.unwrap();
    assert_eq!((l.id.as_str(), l.consumed_by.as_deref()), (id.as_str(), Some("k1")));
    // The same task, re-run after a crash, may present it again; nobody else may.
    t.ledger.consume_lease(&h, "http", 2, "k1").await.unwrap();
    refused(t.ledger.consume_lease(&h, "http", 2, "k2").await, "already used");
    refused(t.ledger.consume_lease(&token_sha256("mpl_forged"), "http", 2, "k3").await, "no such lease");
    assert!(t.ledger.list_leases(false).await.unwrap().is_empty(), "a spent lease is not listed as usable");
    assert_eq!(t.ledger.list_leases(true).await.unwrap().len(), 1);
}

#[tokio::test]
async fn expired_and_revoked_leases_are_refused_and_expired_ones_collected() {
    let t = TestLedger::new();
    let (short, _) = issue(&t, "http", 2, 1_000).await;
    let (revoked, rid) = issue(&t, "http", 2, 60_000).await;
    let (spent, _) = issue(&t, "http", 2, 60_000).await;
    t.ledger.revoke_lease(&rid).await.unwrap();
    refused(t.ledger.consume_lease(&token_sha256(&revoked), "http", 2, "k").await, "revoked");
    t.ledger.consume_lease(&token_sha256(&spent), "http", 2, "k").await.unwrap();
    assert!(t.ledger.revoke_lease(&rid).await.is_ok(), "revoking twice is harmless");
    t.clock.advance_ms(1_000);
    refused(t.ledger.consume_lease(&token_sha256(&short), "http", 2, "k").await, "expired");
    assert_eq!(t.ledger.expire_leases().await.unwrap(), 1, "only the expired one is collected");
    t.clock.advance_ms(60_000);
    assert_eq!(t.ledger.expire_leases().await.unwrap(), 2);
    assert!(t.ledger.list_leases(true).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_consumers_of_one_lease_have_one_winner() {
    let t = TestLedger::new();
    let (token, _) = issue(&t, "http", 2, 60_000).await;
    let h = token_sha256(&token);
    let tries = (0..16).map(|i| {
        let (l, h) = (t.ledger.clone(), h.clone());
        tokio::spawn(async move { l.consume_lease(&h, "http", 2, &format!("task-{i}")).await.is_ok() })
    });
    let mut wins = 0;
    for h in tries.collect::<Vec<_>>() {
        wins += usize::from(h.await.unwrap());
    }
    assert_eq!(wins, 1);
}
