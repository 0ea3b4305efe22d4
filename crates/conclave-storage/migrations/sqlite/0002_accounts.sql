-- Accounts and their devices.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    -- Case-folded username: uniqueness and lookups ignore case.
    username_key  TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    avatar_file_id TEXT,
    bio           TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE devices (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL REFERENCES users(id),
    name               TEXT NOT NULL,
    -- X25519 public key the device proves in the Noise handshake (32 bytes).
    noise_public_key   BLOB,
    -- Incremented to invalidate every token issued to the device so far.
    token_epoch        INTEGER NOT NULL DEFAULT 0,
    -- SHA-256 of the current refresh token; NULL when none is valid.
    refresh_hash       BLOB UNIQUE,
    refresh_expires_at INTEGER,
    created_at         INTEGER NOT NULL,
    last_seen_at       INTEGER NOT NULL,
    revoked_at         INTEGER
) STRICT;

CREATE INDEX devices_by_user ON devices (user_id) WHERE revoked_at IS NULL;
