-- API keys, and the key each job belongs to. A key is `dk_<id>_<secret>`: the id finds the row,
-- only the secret's SHA-256 is kept. Revoked keys stay, so their jobs keep an owner's name.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,     -- 16 hex digits, random
    name        TEXT NOT NULL,                 -- who holds it; several keys may share a name
    prefix      TEXT NOT NULL,                 -- `dk_<id>`: what lists and logs show
    secret_hash TEXT NOT NULL,                 -- SHA-256 of the secret, lowercase hex
    admin       INTEGER NOT NULL DEFAULT 0,
    share       INTEGER NOT NULL DEFAULT 1,    -- weight for fair scheduling among owners
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX api_keys_name ON api_keys (name);

-- NULL: submitted in the open mode, before any key existed.
ALTER TABLE jobs ADD COLUMN owner TEXT REFERENCES api_keys (id);
CREATE INDEX jobs_owner ON jobs (owner, id);
