-- Collaborative (Yjs) documents: one row each, an append-only log of
-- updates, and a snapshot that replaces a prefix of the log.
CREATE TABLE documents (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    owner_id    INTEGER NOT NULL REFERENCES users(id),
    -- Members of this channel may open the document too.
    channel_id  INTEGER REFERENCES channels(id),
    -- Sequence of the newest update ever appended (compaction keeps it).
    head_seq    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
) STRICT;

-- Updates are v1 Yjs updates, opaque to the database.
CREATE TABLE document_updates (
    document_id INTEGER NOT NULL REFERENCES documents(id),
    seq         INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (document_id, seq)
) STRICT;

-- The whole state up to `up_to_seq`, as one v1 update.
CREATE TABLE document_snapshots (
    document_id INTEGER PRIMARY KEY NOT NULL REFERENCES documents(id),
    state       BLOB NOT NULL,
    up_to_seq   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
