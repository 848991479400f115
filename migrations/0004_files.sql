-- Uploaded files. The bytes live in <data-dir>/files/<id>/ (`content`, and `unpacked/` for an
-- archive); this table holds what the API shows. `owner` stays NULL in open mode; once API keys
-- exist it names the key's owner, so another owner's file can be hidden.
CREATE TABLE files (
    id         TEXT PRIMARY KEY NOT NULL,            -- UUID v7: sorts by upload time
    filename   TEXT NOT NULL,                        -- as the client named it; never a path on disk
    bytes      INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    purpose    TEXT CHECK (purpose IN ('dataset', 'model')),
    unpacked   INTEGER NOT NULL DEFAULT 0,           -- 1: an archive, unpacked beside it
    owner      TEXT,
    created_at TEXT NOT NULL                         -- RFC 3339 UTC
);
