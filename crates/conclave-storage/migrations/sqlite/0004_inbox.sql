-- Each user's inbox: per-user events (device changes now; friend requests,
-- invitations and membership changes later) with their own pts.
ALTER TABLE users ADD COLUMN inbox_pts INTEGER NOT NULL DEFAULT 0;

CREATE TABLE inbox_events (
    user_id     INTEGER NOT NULL REFERENCES users(id),
    pts         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,  -- JSON
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, pts)
) STRICT, WITHOUT ROWID;
