-- The social graph (friend requests, friendships, blocks), privacy
-- settings, and groups with their join requests.

CREATE TABLE friend_requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    from_id     INTEGER NOT NULL REFERENCES users(id),
    to_id       INTEGER NOT NULL REFERENCES users(id),
    message     TEXT,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'recalled')),
    created_at  INTEGER NOT NULL,
    handled_at  INTEGER
) STRICT;

-- At most one pending request per direction.
CREATE UNIQUE INDEX friend_requests_pending ON friend_requests (from_id, to_id) WHERE status = 'pending';
CREATE INDEX friend_requests_to ON friend_requests (to_id) WHERE status = 'pending';

-- A friendship is two rows, one per side (each side has its own alias).
CREATE TABLE friendships (
    user_id     INTEGER NOT NULL REFERENCES users(id),
    friend_id   INTEGER NOT NULL REFERENCES users(id),
    alias       TEXT,
    channel_id  INTEGER REFERENCES channels(id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) STRICT, WITHOUT ROWID;

CREATE TABLE blocks (
    user_id     INTEGER NOT NULL REFERENCES users(id),
    blocked_id  INTEGER NOT NULL REFERENCES users(id),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) STRICT, WITHOUT ROWID;

-- One row per user, written when the account is created. A missing row or
-- an unknown value is read as the strictest setting (fail closed).
CREATE TABLE privacy_settings (
    user_id         INTEGER PRIMARY KEY NOT NULL REFERENCES users(id),
    direct_messages TEXT NOT NULL DEFAULT 'everyone',
    searchable_by   TEXT NOT NULL DEFAULT 'everyone',
    group_invites   TEXT NOT NULL DEFAULT 'everyone',
    last_seen       TEXT NOT NULL DEFAULT 'everyone',
    updated_at      INTEGER NOT NULL
) STRICT;

INSERT INTO privacy_settings (user_id, updated_at) SELECT id, updated_at FROM users;

CREATE TABLE groups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id      INTEGER NOT NULL UNIQUE REFERENCES channels(id),
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    avatar_file_id  TEXT,
    owner_id        INTEGER NOT NULL REFERENCES users(id),
    join_approval   INTEGER NOT NULL DEFAULT 0,
    invite_policy   TEXT NOT NULL DEFAULT 'members' CHECK (invite_policy IN ('members', 'admins')),
    member_cap      INTEGER NOT NULL,
    announcement    TEXT,
    mute_all        INTEGER NOT NULL DEFAULT 0,
    -- Invitation codes carry the epoch they were issued under; bumping it
    -- revokes every code issued so far.
    qr_epoch        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    dissolved_at    INTEGER
) STRICT;

CREATE TABLE group_join_requests (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    INTEGER NOT NULL REFERENCES groups(id),
    user_id     INTEGER NOT NULL REFERENCES users(id),
    inviter_id  INTEGER REFERENCES users(id),
    via         TEXT NOT NULL CHECK (via IN ('invite', 'qrcode')),
    status      TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'declined')),
    created_at  INTEGER NOT NULL,
    handled_at  INTEGER,
    handled_by  INTEGER
) STRICT;

CREATE UNIQUE INDEX group_join_requests_pending ON group_join_requests (group_id, user_id) WHERE status = 'pending';
