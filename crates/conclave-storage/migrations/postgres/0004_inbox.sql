-- Each user's inbox: per-user events (device changes, friend requests,
-- invitations, membership changes) with their own pts.
ALTER TABLE users ADD COLUMN inbox_pts BIGINT NOT NULL DEFAULT 0;

CREATE TABLE inbox_events (
    user_id     BIGINT NOT NULL REFERENCES users(id),
    pts         BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,  -- JSON
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, pts)
);
