//! Collaborative documents: each document's row, its append-only log of
//! Yjs updates, a snapshot that replaces a prefix of the log, and the named
//! versions users saved.
//!
//! Storage does not understand the bytes: an update, a snapshot and a
//! version's state are all v1 Yjs updates, and applying the snapshot and
//! then every update after it rebuilds the document.

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

/// The longest name a version may have, in characters (Unicode scalar
/// values). A name has at least one.
pub const VERSION_NAME_MAX_CHARS: usize = 100;

/// A named version of a document, without its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub document_id: DocumentId,
    /// 1 for the document's first version, then 2, 3...; never reused.
    pub version: u64,
    /// Not unique: two versions may share a name.
    pub name: String,
    pub created_by: UserId,
    pub created_at_ms: i64,
    /// The last update of the document's log the state includes.
    pub covers_seq: u64,
    /// The length of the state, in bytes.
    pub size_bytes: u64,
}

/// [`StorageError::Invalid`] unless `name` has 1 to
/// [`VERSION_NAME_MAX_CHARS`] characters.
pub(crate) fn check_version_name(name: &str) -> Result<(), StorageError> {
    let chars = name.chars().count();
    if chars == 0 || chars > VERSION_NAME_MAX_CHARS {
        return Err(StorageError::Invalid(format!(
            "a version name has 1 to {VERSION_NAME_MAX_CHARS} characters, not {chars}"
        )));
    }
    Ok(())
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

    /// Saves `state` (a v1 update holding the whole document, including
    /// the log up to `covers_seq`) as the document's next version (1,
    /// 2...), durably. Only stores: caps are the caller's. An unknown
    /// document is [`StorageError::NotFound`]; a name outside 1 to
    /// [`VERSION_NAME_MAX_CHARS`] characters, or `covers_seq` beyond the
    /// newest update, is [`StorageError::Invalid`] (and takes no number).
    async fn create_version(
        &self,
        document: DocumentId,
        name: &str,
        created_by: UserId,
        state: &[u8],
        covers_seq: u64,
        now_ms: i64,
    ) -> Result<VersionRecord, StorageError>;

    /// The document's versions, newest first, without their states; an
    /// unknown document is [`StorageError::NotFound`].
    async fn versions(&self, document: DocumentId) -> Result<Vec<VersionRecord>, StorageError>;

    /// One version with its state; `None` when the document has no such
    /// version, [`StorageError::NotFound`] when there is no such document.
    async fn version_state(
        &self,
        document: DocumentId,
        version: u64,
    ) -> Result<Option<(VersionRecord, Vec<u8>)>, StorageError>;
}
