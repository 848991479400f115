-- Jobs, their durable event log and their artifacts.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,      -- UUID v7: sorts by creation time
    name             TEXT NOT NULL,
    spec             TEXT NOT NULL,                  -- JSON, as validated
    status           TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    idempotency_key  TEXT UNIQUE,
    created_at       TEXT NOT NULL,                  -- RFC 3339 UTC
    started_at       TEXT,
    finished_at      TEXT,
    error            TEXT,
    progress         TEXT,                           -- JSON: the latest progress event's payload
    result           TEXT,                           -- JSON: the report's summary
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_ms INTEGER                         -- unix milliseconds
);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE events (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,                     -- per job, from 1, no gaps
    type       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE artifacts (
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
