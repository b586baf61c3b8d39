//! HMAC request signing (v1), shared by the API that checks it and `machinactl sign`
//! that produces it.
//!
//! The signature is HMAC-SHA256 with the shared secret over
//! `ts \n nonce \n METHOD \n path-and-query \n sha256(body) \n`, sent as
//! `X-Machina-Signature: v1=<hex>` with `X-Machina-Ts` (Unix seconds) and
//! `X-Machina-Nonce` (8-128 characters of `[A-Za-z0-9._-]`).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Header carrying the Unix time of signing, in seconds.
pub const TS_HEADER: &str = "x-machina-ts";
/// Header carrying the single-use nonce.
pub const NONCE_HEADER: &str = "x-machina-nonce";
/// Header carrying `v1=<hex signature>`.
pub const SIGNATURE_HEADER: &str = "x-machina-signature";
/// Shortest secret accepted, in bytes.
pub const SECRET_MIN_BYTES: usize = 32;

/// The signed string.
pub fn canonical(ts: &str, nonce: &str, method: &str, path_and_query: &str, body: &[u8]) -> String {
    format!("{ts}\n{nonce}\n{}\n{path_and_query}\n{}\n", method.to_ascii_uppercase(), hex::encode(Sha256::digest(body)))
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length")
}

/// The `X-Machina-Signature` value for a request.
pub fn sign(secret: &[u8], ts: &str, nonce: &str, method: &str, path_and_query: &str, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(canonical(ts, nonce, method, path_and_query, body).as_bytes());
    format!("v1={}", hex::encode(m.finalize().into_bytes()))
}

/// Check a `v1=<hex>` signature in constant time.
pub fn verify(
    secret: &[u8],
    signature: &str,
    ts: &str,
    nonce: &str,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> bool {
    let Some(bytes) = signature.strip_prefix("v1=").and_then(|h| hex::decode(h).ok()) else { return false };
    let mut m = mac(secret);
    m.update(canonical(ts, nonce, method, path_and_query, body).as_bytes());
    m.verify_slice(&bytes).is_ok()
}

/// A nonce is 8-128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_nonce(nonce: &str) -> bool {
    (8..=128).contains(&nonce.len()) && nonce.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_part() {
        let k = b"0123456789abcdef0123456789abcdef";
        let sig = sign(k, "1700000000", "nonce-123", "post", "/enqueue", b"{}");
        assert!(verify(k, &sig, "1700000000", "nonce-123", "POST", "/enqueue", b"{}"));
        for (ts, nonce, method, path, body) in [
            ("1700000001", "nonce-123", "POST", "/enqueue", &b"{}"[..]),
            ("1700000000", "nonce-124", "POST", "/enqueue", b"{}"),
            ("1700000000", "nonce-123", "GET", "/enqueue", b"{}"),
            ("1700000000", "nonce-123", "POST", "/runs", b"{}"),
            ("1700000000", "nonce-123", "POST", "/enqueue", b"{ }"),
        ] {
            assert!(!verify(k, &sig, ts, nonce, method, path, body), "{ts} {nonce} {method} {path}");
        }
        assert!(!verify(
            b"another secret, just as long......",
            &sig,
            "1700000000",
            "nonce-123",
            "POST",
            "/enqueue",
            b"{}"
        ));
        assert!(!verify(k, "v2=00", "1700000000", "nonce-123", "POST", "/enqueue", b"{}"));
        assert!(is_valid_nonce("abcdefgh") && !is_valid_nonce("short") && !is_valid_nonce("bad nonce!"));
    }
}
