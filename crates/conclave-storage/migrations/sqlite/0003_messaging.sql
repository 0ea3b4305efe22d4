-- Channels, their members, and each channel's append-only event log.
CREATE TABLE channels (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    kind              TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    title             TEXT,
    -- "<lower user id>:<higher user id>" for direct channels: one per pair.
    direct_key        TEXT UNIQUE,
    -- Head of the event log: the pts of the newest event.
    pts               INTEGER NOT NULL DEFAULT 0,
    -- The message head: pts of the newest message event, so a reaction or
    -- a read receipt moves `pts` but not what the conversation list shows.
    last_message_pts  INTEGER NOT NULL DEFAULT 0,
    last_activity_at  INTEGER NOT NULL,
    created_at        INTEGER NOT NULL
) STRICT;

CREATE TABLE channel_members (
    channel_id          INTEGER NOT NULL REFERENCES channels(id),
    user_id             INTEGER NOT NULL REFERENCES users(id),
    role                TEXT NOT NULL DEFAULT 'member',
    -- Events before this pts are not visible to the member.
    joined_pts          INTEGER NOT NULL DEFAULT 0,
    read_pts            INTEGER NOT NULL DEFAULT 0,
    pinned              INTEGER NOT NULL DEFAULT 0,
    -- Hidden until a message newer than this pts arrives.
    hidden_until_pts    INTEGER,
    notifications_muted INTEGER NOT NULL DEFAULT 0,
    -- The member may not send before this time (unix ms).
    send_muted_until    INTEGER,
    joined_at           INTEGER NOT NULL,
    PRIMARY KEY (channel_id, user_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX channel_members_by_user ON channel_members (user_id, channel_id);

CREATE TABLE channel_events (
    channel_id  INTEGER NOT NULL REFERENCES channels(id),
    pts         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    message_id  INTEGER,
    actor_id    INTEGER NOT NULL,
    -- Who is told live: 'members' or 'actor_and_peer' (read receipts).
    audience    TEXT NOT NULL DEFAULT 'members',
    body        TEXT NOT NULL,  -- JSON, as pushed to clients
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (channel_id, pts)
) STRICT, WITHOUT ROWID;

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id        INTEGER NOT NULL REFERENCES channels(id),
    pts               INTEGER NOT NULL,
    sender_id         INTEGER NOT NULL,
    sender_device_id  INTEGER NOT NULL,
    client_msg_id     TEXT NOT NULL,
    -- NULL once revoked: revoked content is erased, not hidden.
    content           TEXT,
    reply_to          INTEGER,
    mentions          TEXT NOT NULL DEFAULT '{}',
    created_at        INTEGER NOT NULL,
    revoked_at        INTEGER,
    revoked_by        INTEGER,
    pinned            INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sender_id, sender_device_id, client_msg_id)
) STRICT;

CREATE INDEX messages_by_channel ON messages (channel_id, pts);

CREATE TABLE reactions (
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    user_id     INTEGER NOT NULL,
    emoji       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
) STRICT, WITHOUT ROWID;

-- Full-text index of message text; rowid = message id. Contentless: the
-- text lives in `messages` only, and a revoked message is deleted here.
CREATE VIRTUAL TABLE messages_fts USING fts5 (text, content = '', contentless_delete = 1);
