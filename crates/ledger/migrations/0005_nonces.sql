-- Nonces of HMAC-signed requests, kept until their signature's time window has passed, so a
-- replay is refused also across restarts.
CREATE TABLE nonces (
    nonce      TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX nonces_by_expiry ON nonces(expires_at);
