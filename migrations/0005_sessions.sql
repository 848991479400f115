-- Browser sessions: the dashboard exchanges an API key for an HttpOnly cookie, because the
-- browser's EventSource cannot send an Authorization header. Only the token's SHA-256 is kept;
-- a session acts as its key and ends with it (revoked) or at expires_at.
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY NOT NULL,     -- SHA-256 of the cookie's token, lowercase hex
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL                  -- RFC 3339 UTC, the format of created_at
);
CREATE INDEX sessions_expiry ON sessions (expires_at);
