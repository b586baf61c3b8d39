//! Permission lease tokens: what an admin hands out and a task presents.
//!
//! A token is 32 random bytes, printed as `mpl_` + hex. Only its sha256 is stored, so
//! the ledger (or a snapshot of it) never holds a usable token.

use rand::RngCore;

/// Prefix of every token (recognisable in logs and secret scanners).
pub const TOKEN_PREFIX: &str = "mpl_";

/// A fresh random token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn token_sha256(token: &str) -> String {
    crate::plan::sha256_hex(token.as_bytes())
}

/// Highest tier (privileged).
pub const MAX_TIER: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == TOKEN_PREFIX.len() + 64);
        assert_eq!(token_sha256(&a), token_sha256(&a));
        assert_ne!(token_sha256(&a), token_sha256(&b));
    }
}
