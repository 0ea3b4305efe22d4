//! Uploaded files: each file's row, the upload token that fills it, the
//! chunks ("parts") received so far, and the channels whose messages
//! reference it.
//!
//! Storage does not hold the bytes: they live in a blob store (local disk or
//! S3), as staging parts while the upload is in progress and then under a
//! content key (the SHA-256 of the bytes), which identical uploads share.
//! The rows here are the only record of which staged part counts, so two
//! writers racing for the same offset cannot both win.

use async_trait::async_trait;
use conclave_core::{ChannelId, FileId, UserId};

use crate::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileStatus {
    /// Created by an upload token; bytes may still be arriving.
    Pending,
    /// Every byte arrived and the blob is stored under `content_key`.
    Complete,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Pending => "pending",
            FileStatus::Complete => "complete",
        }
    }

    pub(crate) fn parse(raw: &str) -> Result<Self, StorageError> {
        match raw {
            "pending" => Ok(FileStatus::Pending),
            "complete" => Ok(FileStatus::Complete),
            other => Err(StorageError::Corrupt(format!(
                "unknown file status `{other}`"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub id: FileId,
    /// The uploader.
    pub owner_id: UserId,
    pub name: String,
    pub mime: String,
    /// The size the uploader declared; the upload holds exactly this many
    /// bytes when complete.
    pub size: u64,
    /// The SHA-256 (lower-case hex) the uploader declared, checked when the
    /// last byte arrives.
    pub declared_sha256: Option<String>,
    /// The SHA-256 (lower-case hex) of the stored bytes, once complete.
    pub sha256: Option<String>,
    /// Where the bytes are in the blob store, once complete.
    pub content_key: Option<String>,
    /// The configured storage source holding the bytes.
    pub source_id: String,
    pub status: FileStatus,
    pub created_at_ms: i64,
    /// A pending upload is abandoned (and collected) after this time.
    pub expires_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    /// An image's width and height in pixels, once read (see
    /// [`FileStore::record_image`]).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A complete file holding the image's thumbnail.
    pub thumbnail_file_id: Option<FileId>,
    /// Why the image could not be read (a code such as `image_too_large`).
    pub image_error: Option<String>,
}

impl FileRecord {
    /// Whether what the file's bytes say as an image is recorded (its size,
    /// or why it could not be read).
    pub fn image_known(&self) -> bool {
        self.width.is_some() || self.image_error.is_some()
    }
}

/// What reading an uploaded image found, for [`FileStore::record_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewImage<'a> {
    /// The image's size, and its thumbnail (stored already under
    /// `content_key`) if one was made.
    Read {
        width: u32,
        height: u32,
        thumbnail: Option<NewThumbnail<'a>>,
    },
    /// The image could not (or would not) be read; `error` says why.
    Unread { error: &'a str },
}

/// A thumbnail whose bytes are stored: it becomes a complete file of the
/// image's owner, on the image's storage source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewThumbnail<'a> {
    pub name: &'a str,
    pub mime: &'a str,
    pub size: u64,
    pub sha256: &'a str,
    pub content_key: &'a str,
    pub width: u32,
    pub height: u32,
}

/// A file being uploaded, as its token finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRecord {
    pub file: FileRecord,
    /// Bytes received so far: the offset the next chunk must start at.
    pub received: u64,
    pub expires_at_ms: i64,
    /// When the upload completed; the token is spent from then on.
    pub used_at_ms: Option<i64>,
}

/// A received chunk, staged in the blob store under `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    pub start: u64,
    pub end: u64,
    pub key: String,
}

pub struct NewUpload<'a> {
    pub owner: UserId,
    pub name: &'a str,
    pub mime: &'a str,
    pub size: u64,
    pub declared_sha256: Option<&'a str>,
    pub source_id: &'a str,
    /// SHA-256 of the upload token; the token itself is never stored.
    pub token_hash: [u8; 32],
    pub expires_at_ms: i64,
    /// The owner's files (complete, or pending and unexpired) may not add
    /// up to more than this, this upload included.
    pub quota_bytes: u64,
    pub now_ms: i64,
}

/// What became of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Recorded; the upload has received this many bytes now.
    Committed { received: u64 },
    /// The upload is at another offset (another writer won, or the client
    /// is behind); nothing was recorded.
    Stale { received: u64 },
}

#[async_trait]
pub trait FileStore: Send + Sync {
    /// Creates a pending file and its upload token, atomically, unless the
    /// owner's usage plus `size` would exceed the quota
    /// ([`StorageError::LimitReached`]).
    async fn create_upload(&self, upload: NewUpload<'_>) -> Result<FileRecord, StorageError>;

    async fn file(&self, id: FileId) -> Result<Option<FileRecord>, StorageError>;

    /// The upload a token opens (expired and spent ones too: the caller
    /// decides what they may still do).
    async fn upload_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<UploadRecord>, StorageError>;

    async fn upload(&self, file: FileId) -> Result<Option<UploadRecord>, StorageError>;

    /// Records the chunk `[start, end)` staged under `key` if the upload
    /// has received exactly `start` bytes, is unspent and has not expired
    /// at `now_ms`. The offset only ever moves forward. `end` past the
    /// declared size, or not after `start`, is [`StorageError::Invalid`];
    /// an unknown, spent or expired upload is [`StorageError::NotFound`].
    async fn commit_chunk(
        &self,
        file: FileId,
        start: u64,
        end: u64,
        key: &str,
        now_ms: i64,
    ) -> Result<ChunkOutcome, StorageError>;

    /// The recorded chunks, in order; they cover `[0, received)`.
    async fn parts(&self, file: FileId) -> Result<Vec<PartRecord>, StorageError>;

    /// Marks a fully received upload complete with its checksum and content
    /// key, spends its token and forgets its parts. Returns `true` if this
    /// call completed it, `false` (changing nothing) if it was complete
    /// already. Missing bytes are [`StorageError::Invalid`]; an unknown
    /// file [`StorageError::NotFound`].
    async fn complete_file(
        &self,
        file: FileId,
        sha256: &str,
        content_key: &str,
        now_ms: i64,
    ) -> Result<bool, StorageError>;

    /// Deletes a pending upload (file, token, parts). Returns `false` when
    /// there is no pending upload with this id; a complete file is never
    /// deleted here.
    async fn delete_upload(&self, file: FileId) -> Result<bool, StorageError>;

    /// A complete file whose bytes are stored under `content_key` on
    /// `source_id`, if any: identical uploads share one blob.
    async fn file_by_content_key(
        &self,
        source_id: &str,
        content_key: &str,
    ) -> Result<Option<FileRecord>, StorageError>;

    /// Bytes the owner's files count against the quota: complete files and
    /// pending uploads that have not expired at `now_ms`, by declared size.
    async fn usage(&self, owner: UserId, now_ms: i64) -> Result<u64, StorageError>;

    /// Pending uploads that expired before `before_ms`, oldest first.
    async fn expired_uploads(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StorageError>;

    /// Records what reading the complete file `file` as an image found, in
    /// one transaction: a [`NewImage::Read`] thumbnail becomes a complete
    /// file (same owner and source, its own width and height) named on the
    /// image. The first record wins: if the file's image is already known
    /// ([`FileRecord::image_known`]) nothing changes (no thumbnail is
    /// created). Returns the file as it then is. A pending file is
    /// [`StorageError::Invalid`]; an unknown one [`StorageError::NotFound`].
    async fn record_image(
        &self,
        file: FileId,
        image: NewImage<'_>,
        now_ms: i64,
    ) -> Result<FileRecord, StorageError>;

    /// Records that a message referencing `file` was sent in `channel`
    /// (idempotent).
    async fn add_reference(
        &self,
        file: FileId,
        channel: ChannelId,
        now_ms: i64,
    ) -> Result<(), StorageError>;

    /// Whether `user` is a current member of a channel where a message
    /// referencing `file` was sent.
    async fn referenced_for(&self, file: FileId, user: UserId) -> Result<bool, StorageError>;
}
