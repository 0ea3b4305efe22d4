-- Named versions of collaborative documents: the whole state at the moment
-- a user saved it, as one v1 Yjs update, numbered per document.

-- Number of the newest version ever created; the next one is this plus one.
ALTER TABLE documents ADD COLUMN head_version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE document_versions (
    document_id INTEGER NOT NULL REFERENCES documents(id),
    version     INTEGER NOT NULL,
    -- 1 to 100 characters, not unique.
    name        TEXT NOT NULL,
    created_by  INTEGER NOT NULL REFERENCES users(id),
    created_at  INTEGER NOT NULL,
    -- The last update of the document's log the state includes.
    covers_seq  INTEGER NOT NULL,
    state       BLOB NOT NULL,
    PRIMARY KEY (document_id, version)
) STRICT;
