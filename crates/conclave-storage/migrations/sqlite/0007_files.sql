-- Uploaded files. The bytes live in a blob store; these rows say which
-- bytes belong to which file, who uploaded it, and where it was shared.
CREATE TABLE files (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id        INTEGER NOT NULL REFERENCES users(id),
    name            TEXT NOT NULL,
    mime            TEXT NOT NULL,
    -- Declared by the uploader; a complete file has exactly this many bytes.
    size            INTEGER NOT NULL CHECK (size >= 0),
    -- Lower-case hex SHA-256 the uploader declared, checked at the last byte.
    declared_sha256 TEXT,
    -- Lower-case hex SHA-256 of the stored bytes; NULL until complete.
    sha256          TEXT,
    -- Where the bytes are in the blob store (content-addressed); NULL until
    -- complete.
    content_key     TEXT,
    -- The configured storage source holding the bytes.
    source_id       TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'complete')),
    created_at      INTEGER NOT NULL,
    -- A pending upload is abandoned after this time.
    expires_at      INTEGER NOT NULL,
    completed_at    INTEGER
) STRICT;

CREATE INDEX files_by_owner ON files (owner_id);
CREATE INDEX files_by_content ON files (source_id, content_key) WHERE status = 'complete';
CREATE INDEX files_pending_by_expiry ON files (expires_at) WHERE status = 'pending';

-- One upload token per file, stored hashed; spent when the upload completes.
CREATE TABLE upload_tokens (
    file_id     INTEGER PRIMARY KEY NOT NULL REFERENCES files(id),
    token_hash  BLOB NOT NULL UNIQUE,
    -- Bytes received so far: where the next chunk must start.
    received    INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
) STRICT;

-- The chunks received, each staged in the blob store under `key`. Only
-- recorded chunks count: a writer that lost a race leaves an unrecorded
-- object behind, which is deleted with the upload's staging area.
CREATE TABLE upload_parts (
    file_id      INTEGER NOT NULL REFERENCES files(id),
    start_offset INTEGER NOT NULL,
    end_offset   INTEGER NOT NULL,
    key          TEXT NOT NULL,
    PRIMARY KEY (file_id, start_offset)
) STRICT, WITHOUT ROWID;

-- Channels where a message referencing the file was sent: their current
-- members may download it.
CREATE TABLE file_references (
    file_id     INTEGER NOT NULL REFERENCES files(id),
    channel_id  INTEGER NOT NULL REFERENCES channels(id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (file_id, channel_id)
) STRICT, WITHOUT ROWID;
