//! Collaborative documents: each document's row, its append-only log of
//! Yjs updates, and a snapshot that replaces a prefix of the log.
//!
//! Storage does not understand the bytes: an update and a snapshot are both
//! v1 Yjs updates, and applying the snapshot and then every update after it
//! rebuilds the document.

use async_trait::async_trait;
use conclave_core::{ChannelId, DocumentId, UserId};

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentRecord {
    pub id: DocumentId,
    /// Unique across the installation; the name clients connect with.
    pub name: String,
    pub owner_id: UserId,
    /// Members of this channel may open the document too.
    pub channel_id: Option<ChannelId>,
    pub created_at_ms: i64,
}

/// Everything needed to rebuild a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDocument {
    /// The whole state up to `snapshot_seq`, if a snapshot was taken.
    pub snapshot: Option<Vec<u8>>,
    /// The last update the snapshot covers (0 without a snapshot).
    pub snapshot_seq: u64,
    /// Updates after the snapshot, oldest first, with their sequence.
    pub updates: Vec<(u64, Vec<u8>)>,
}

impl StoredDocument {
    /// The sequence of the newest update, covered by the snapshot or not.
    pub fn head_seq(&self) -> u64 {
        self.updates
            .last()
            .map_or(self.snapshot_seq, |(seq, _)| *seq)
    }
}

#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Creates a document; [`StorageError::Conflict`] when the name is
    /// taken.
    async fn create_document(
        &self,
        name: &str,
        owner: UserId,
        channel: Option<ChannelId>,
        now_ms: i64,
    ) -> Result<DocumentRecord, StorageError>;

    async fn document_by_name(&self, name: &str) -> Result<Option<DocumentRecord>, StorageError>;

    async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, StorageError>;

    /// Appends an update with the document's next sequence number (1, 2...)
    /// and returns it. The update is durable when this returns.
    async fn append_update(
        &self,
        document: DocumentId,
        update: &[u8],
        now_ms: i64,
    ) -> Result<u64, StorageError>;

    /// The snapshot and every update after it, read consistently.
    async fn load(&self, document: DocumentId) -> Result<StoredDocument, StorageError>;

    /// Stores `snapshot` as the state up to `up_to_seq` and deletes the
    /// updates it covers, atomically. Returns `false` (changing nothing)
    /// when the stored snapshot already covers `up_to_seq`; `up_to_seq`
    /// beyond the newest update is [`StorageError::Invalid`].
    async fn compact(
        &self,
        document: DocumentId,
        snapshot: &[u8],
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<bool, StorageError>;
}
