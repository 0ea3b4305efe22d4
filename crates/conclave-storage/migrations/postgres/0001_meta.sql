-- Facts about this installation: when it was created, by which version,
-- its installation id. Written once per key; never updated in place.
CREATE TABLE conclave_meta (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL  -- unix milliseconds
);
