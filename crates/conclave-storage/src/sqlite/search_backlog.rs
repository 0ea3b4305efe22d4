//! Message search text, indexed in bulk.
//!
//! FTS5 writes what one transaction indexed as a new segment of the index
//! when it commits, and merges segments as they pile up. For the
//! group-commit writer, whose transactions each hold a few messages, that
//! was a third of the pages every commit wrote to the WAL (an FTS5 segment
//! and its bookkeeping cost about five pages even for one message). So a
//! batch appends its messages' texts to the `search_backlog` table instead,
//! which costs the page at the table's end, and the backlog is moved into
//! `messages_fts` in one go: by the writer, in the transaction of the
//! batch that brings it to [`INDEX_AT`] texts, and by every search that
//! finds it not empty, before it reads, so a search always finds every
//! message sent before it.
//!
//! A message revoked while its text waits is deleted from the backlog as
//! well as from the index (see `revoke_message`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Texts waiting before the writer indexes them: enough that the index's
/// fixed cost per segment is paid rarely, few enough that the batch which
/// indexes them (about a millisecond for 256) does not stand out.
pub(super) const INDEX_AT: u64 = 256;

/// `(message id, searchable text)`: waits in the backlog.
pub(super) const WAIT_SQL: &str = "INSERT INTO search_backlog (message_id, text) VALUES (?, ?)";

/// Moves the whole backlog into the index; run in one write transaction.
pub(super) const INDEX_SQL: [&str; 2] = [
    "INSERT INTO messages_fts (rowid, text) \
     SELECT message_id, text FROM search_backlog ORDER BY message_id",
    "DELETE FROM search_backlog",
];

/// Forgets a revoked message's text if it is still waiting.
pub(super) const FORGET_SQL: &str = "DELETE FROM search_backlog WHERE message_id = ?";

/// How many texts may be waiting. Never less than the table holds: it only
/// drops to zero after a committed [`INDEX_SQL`], under the writer lock.
/// It may be more (a revoke removes a waiting text without counting it),
/// which only costs a search an empty indexing transaction.
#[derive(Debug, Default)]
pub(super) struct SearchBacklog {
    waiting: AtomicU64,
}

/// What a batch did to the backlog (decided inside its transaction,
/// counted once it committed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Indexing {
    /// Texts the batch added to the backlog.
    pub added: u64,
    /// Whether the batch moved the backlog into the index.
    pub indexed: bool,
}

impl SearchBacklog {
    /// A backlog holding `waiting` texts (counted when the storage opens).
    pub fn new(waiting: u64) -> Self {
        Self {
            waiting: AtomicU64::new(waiting),
        }
    }

    /// Whether texts may be waiting, so a search must index them first.
    pub fn any(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Whether a batch adding `adding` texts should index the backlog.
    pub fn due(&self, adding: u64) -> bool {
        self.waiting.load(Ordering::Acquire) + adding >= INDEX_AT
    }

    /// Counts a committed batch's [`Indexing`].
    pub fn committed(&self, indexing: Indexing) {
        if indexing.indexed {
            self.waiting.store(0, Ordering::Release);
        } else if indexing.added > 0 {
            self.waiting.fetch_add(indexing.added, Ordering::AcqRel);
        }
    }

    /// Counts a committed [`INDEX_SQL`].
    pub fn indexed(&self) {
        self.waiting.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_committed_batches() {
        let backlog = SearchBacklog::new(3);
        assert!(backlog.any());
        assert!(!backlog.due(INDEX_AT - 4));
        assert!(backlog.due(INDEX_AT - 3));
        backlog.committed(Indexing {
            added: 10,
            indexed: false,
        });
        assert!(backlog.due(INDEX_AT - 13));
        backlog.committed(Indexing {
            added: 5,
            indexed: true,
        });
        assert!(!backlog.any(), "indexing takes the batch's own texts too");
        backlog.committed(Indexing::default());
        assert!(!backlog.any());
        backlog.committed(Indexing {
            added: 1,
            indexed: false,
        });
        assert!(backlog.any());
        backlog.indexed();
        assert!(!backlog.any());
    }
}
