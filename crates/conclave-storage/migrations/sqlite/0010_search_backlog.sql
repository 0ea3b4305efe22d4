-- Search text of sent messages not yet in `messages_fts`. Each group of
-- sends appends its texts here (one page at the table's end) instead of
-- writing an FTS5 segment per commit; they are moved into the index in
-- bulk, and always before a search (see `sqlite/search_backlog.rs`).
CREATE TABLE search_backlog (
    message_id  INTEGER PRIMARY KEY,
    text        TEXT NOT NULL
) STRICT;
