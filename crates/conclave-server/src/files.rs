//! Files: receiving uploads chunk by chunk, completing them into
//! content-addressed blobs, reading them back, and collecting abandoned
//! uploads.
//!
//! An upload is a pending file row with a hashed upload token. Each chunk
//! is written to a staging object of its own and then recorded in the
//! database only if the upload is still at the offset the chunk starts at,
//! so the database alone decides which bytes count, whichever node wrote
//! them. The SHA-256 is computed as chunks arrive (the running hash is kept
//! in memory per upload; after a restart, or on another node, the staged
//! parts are read back to hash them). When the last byte is recorded the
//! checksum is checked against the declared one, the parts become
//! `blobs/<sha256>` (unless identical bytes are stored already) and the file
//! is complete.
//!
//! A complete file declared `image/*` is then read as an image (`images`),
//! on a blocking thread, at most [`IMAGE_READS_MAX`] at a time: its width
//! and height, and a thumbnail stored as a file of its own (same owner,
//! content-addressed like any blob). An image that cannot or may not be read
//! stays a plain file, with the reason recorded.

mod blobs;
mod images;
pub(crate) mod ranges;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use conclave_config::Config;
use conclave_core::{ErrorCode, FileId};
use conclave_protocol::api::files::{FileStatus as WireStatus, IMAGE_TOO_LARGE, UploadProgress};
use conclave_storage::{
    ChunkOutcome, FileRecord, FileStatus, NewImage, NewThumbnail, StorageError, UploadRecord,
};
use futures_util::{Stream, StreamExt as _};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::api_error::ApiError;
use crate::state::AppState;
use crate::tokens::{self, TOKEN_LEN_MAX_BYTES};

pub(crate) use blobs::BlobStore;

/// Running hashes kept in memory at most; uploads beyond this are hashed by
/// reading their parts back when they complete.
const RUNNING_HASHES_MAX: usize = 10_000;

/// Images read at once (each on a blocking thread, with up to
/// `file.image_max_source_bytes` of input and `file.image_max_decode_bytes`
/// of decoded pixels in memory).
const IMAGE_READS_MAX: usize = 2;

/// Abandoned uploads collected per pass.
const COLLECT_BATCH: u32 = 100;

/// How often abandoned uploads are looked for: at most this long apart...
const COLLECT_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// ...and at least this long apart.
const COLLECT_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// The configured storage sources and the running hashes of uploads.
pub(crate) struct Files {
    sources: HashMap<String, BlobStore>,
    default_source: String,
    /// Per upload: the offset hashed so far and the hash state there.
    hashes: Mutex<HashMap<FileId, (u64, Sha256)>>,
    /// Permits to read an image.
    image_reads: Arc<Semaphore>,
}

/// A refused chunk or status query: the error, and where the upload stands
/// when that is known (sent back so the client can resume).
#[derive(Debug)]
pub(crate) struct Refused {
    pub error: ApiError,
    pub offset: Option<u64>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            offset: None,
        }
    }
}

impl From<StorageError> for Refused {
    fn from(err: StorageError) -> Self {
        ApiError::from(err).into()
    }
}

fn refused(code: ErrorCode, message: impl Into<String>, offset: u64) -> Refused {
    Refused {
        error: ApiError::new(code, message),
        offset: Some(offset),
    }
}

fn blob_error(err: opendal::Error) -> ApiError {
    ApiError::internal(format!("blob store: {err}"))
}

impl Files {
    /// Opens every configured storage source (creating local directories).
    pub fn open(config: &Config) -> anyhow::Result<Self> {
        let mut sources = HashMap::new();
        for source in &config.file.storage_sources {
            let store = BlobStore::open(config, source).map_err(|err| {
                anyhow::anyhow!("opening file storage source `{}`: {err:#}", source.id)
            })?;
            sources.insert(source.id.clone(), store);
        }
        Ok(Self {
            sources,
            default_source: config.file.default_source.clone(),
            hashes: Mutex::new(HashMap::new()),
            image_reads: Arc::new(Semaphore::new(IMAGE_READS_MAX)),
        })
    }

    /// Where new uploads go.
    pub fn default_source(&self) -> &str {
        &self.default_source
    }

    fn source(&self, id: &str) -> Result<&BlobStore, ApiError> {
        self.sources.get(id).ok_or_else(|| {
            ApiError::internal(format!(
                "file storage source `{id}` is no longer configured"
            ))
        })
    }

    /// The upload `token` opens, if it is for `file` and still usable.
    async fn upload_for(
        &self,
        state: &AppState,
        file: FileId,
        token: &str,
    ) -> Result<UploadRecord, ApiError> {
        let invalid = || ApiError::new(ErrorCode::Unauthenticated, "not a valid upload token");
        if token.is_empty() || token.len() > TOKEN_LEN_MAX_BYTES {
            return Err(invalid());
        }
        let upload = state
            .storage
            .files()
            .upload_by_token(tokens::hash_upload_token(token))
            .await?
            .ok_or_else(invalid)?;
        if upload.file.id != file {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the upload token is for another file",
            ));
        }
        if upload.used_at_ms.is_some() {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the upload token was used up: the upload is complete",
            ));
        }
        if upload.expires_at_ms <= crate::unix_ms() {
            return Err(ApiError::new(
                ErrorCode::TokenExpired,
                "the upload token has expired; ask for a new one",
            ));
        }
        Ok(upload)
    }

    /// Where the upload `token` opens stands.
    pub async fn progress(
        &self,
        state: &AppState,
        file: FileId,
        token: &str,
    ) -> Result<UploadProgress, Refused> {
        let upload = self.upload_for(state, file, token).await?;
        Ok(progress(&upload.file, upload.received))
    }

    /// Receives one chunk of an upload: `content_range` names it (the whole
    /// file without one), `body` carries exactly its bytes. Bytes that
    /// arrived before the client went away are kept.
    pub async fn receive_chunk<S, E>(
        &self,
        state: &AppState,
        file: FileId,
        token: &str,
        content_range: Option<&str>,
        mut body: S,
    ) -> Result<UploadProgress, Refused>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self.upload_for(state, file, token).await?;
        let size = upload.file.size;
        let chunk = ranges::upload_chunk(content_range, size)
            .map_err(|bad| refused(ErrorCode::BadRequest, bad.0, upload.received))?;
        if size == 0 {
            let done = self.finalize(state, file).await?;
            return Ok(progress(&done, size));
        }
        if chunk.start != upload.received {
            return Err(refused(
                ErrorCode::OffsetMismatch,
                format!(
                    "the chunk starts at {} but the upload is at {}",
                    chunk.start, upload.received
                ),
                upload.received,
            ));
        }
        let store = self.source(&upload.file.source_id)?;
        let nonce = crate::secrets::random_hex(8).map_err(ApiError::from)?;
        let key = BlobStore::part_key(file, chunk.start, &nonce);
        let mut hash = self.running_hash(file, chunk.start);
        let mut writer = store.writer(&key).await.map_err(blob_error)?;
        let expected = chunk.end - chunk.start;
        let idle = Duration::from_millis(state.config.limits.idle_timeout_ms);
        let mut received = 0u64;
        loop {
            let next = match tokio::time::timeout(idle, body.next()).await {
                Ok(next) => next,
                Err(_) => {
                    tracing::debug!(%file, "upload chunk stalled; keeping what arrived");
                    break;
                }
            };
            let bytes = match next {
                None => break,
                Some(Ok(bytes)) => bytes,
                Some(Err(err)) => {
                    tracing::debug!(%file, error = %err, "upload chunk cut off; keeping what arrived");
                    break;
                }
            };
            let len = bytes.len() as u64;
            if received + len > expected {
                let _ = writer.abort().await;
                let _ = store.delete(&key).await;
                return Err(refused(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "the chunk carries more than the {expected} bytes its range (or the declared size) allows"
                    ),
                    upload.received,
                ));
            }
            if let Some(hash) = &mut hash {
                hash.update(&bytes);
            }
            received += len;
            if let Err(err) = writer.write(bytes).await {
                let _ = writer.abort().await;
                return Err(blob_error(err).into());
            }
        }
        if received == 0 {
            let _ = writer.abort().await;
            let _ = store.delete(&key).await;
            return Err(refused(
                ErrorCode::BadRequest,
                "the chunk carried no bytes",
                upload.received,
            ));
        }
        writer.close().await.map_err(blob_error)?;
        let end = chunk.start + received;
        let outcome = state
            .storage
            .files()
            .commit_chunk(file, chunk.start, end, &key, crate::unix_ms())
            .await;
        let offset = match outcome {
            Ok(ChunkOutcome::Committed { received }) => received,
            Ok(ChunkOutcome::Stale { received }) => {
                let _ = store.delete(&key).await;
                return Err(refused(
                    ErrorCode::OffsetMismatch,
                    format!("another chunk got there first; the upload is at {received}"),
                    received,
                ));
            }
            Err(StorageError::NotFound(_)) => {
                let _ = store.delete(&key).await;
                return Err(ApiError::new(
                    ErrorCode::TokenExpired,
                    "the upload expired or completed while the chunk arrived",
                )
                .into());
            }
            Err(err) => {
                let _ = store.delete(&key).await;
                return Err(err.into());
            }
        };
        if let Some(hash) = hash {
            self.keep_running_hash(file, offset, hash);
        }
        if received < expected {
            return Err(refused(
                ErrorCode::BadRequest,
                format!(
                    "the chunk ended after {received} of its {expected} bytes; they were kept, resume at {offset}"
                ),
                offset,
            ));
        }
        if offset == size {
            let done = self.finalize(state, file).await?;
            return Ok(progress(&done, size));
        }
        Ok(progress(&upload.file, offset))
    }

    /// Completes an upload whose bytes have all arrived: checks the
    /// declared checksum, stores the blob (once per content) and marks the
    /// file complete, then reads it as an image if it is one. Idempotent; a
    /// complete file is returned as it is (an image not read yet, after a
    /// restart or a failure, is read now).
    pub async fn finalize(&self, state: &AppState, file: FileId) -> Result<FileRecord, ApiError> {
        let record = self.complete_upload(state, file).await?;
        Ok(self.read_image(state, record).await)
    }

    async fn complete_upload(
        &self,
        state: &AppState,
        file: FileId,
    ) -> Result<FileRecord, ApiError> {
        let files = state.storage.files();
        let Some(upload) = files.upload(file).await? else {
            return match files.file(file).await? {
                Some(record) if record.status == FileStatus::Complete => Ok(record),
                _ => Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no upload {file}"),
                )),
            };
        };
        if upload.file.status == FileStatus::Complete {
            return Ok(upload.file);
        }
        if upload.received != upload.file.size {
            return Err(ApiError::new(
                ErrorCode::UploadIncomplete,
                format!(
                    "{} of {} bytes have arrived",
                    upload.received, upload.file.size
                ),
            ));
        }
        match self.store_blob(state, &upload).await {
            Ok(record) => Ok(record),
            Err(err) => {
                // A concurrent completion (the last chunk and an
                // upload_callback at once) may have moved the parts away.
                match files.file(file).await? {
                    Some(record) if record.status == FileStatus::Complete => Ok(record),
                    _ => Err(err),
                }
            }
        }
    }

    async fn store_blob(
        &self,
        state: &AppState,
        upload: &UploadRecord,
    ) -> Result<FileRecord, ApiError> {
        let files = state.storage.files();
        let file = upload.file.id;
        let store = self.source(&upload.file.source_id)?;
        let parts = files.parts(file).await?;
        let covered = parts.first().is_none_or(|p| p.start == 0)
            && parts.windows(2).all(|w| w[0].end == w[1].start)
            && parts.last().map_or(0, |p| p.end) == upload.file.size;
        if !covered {
            return Err(ApiError::internal(format!(
                "the recorded parts of file {file} do not cover it"
            )));
        }
        let sha256 = match self.finished_hash(file, upload.file.size) {
            Some(sha256) => sha256,
            None => {
                let mut hash = Sha256::new();
                for part in &parts {
                    let mut stream = store
                        .read(&part.key, 0..part.end - part.start)
                        .await
                        .map_err(blob_error)?;
                    while let Some(bytes) = stream.next().await {
                        let bytes = bytes.map_err(|err| {
                            ApiError::internal(format!("reading part {}: {err}", part.key))
                        })?;
                        hash.update(&bytes);
                    }
                }
                hex::encode(hash.finalize())
            }
        };
        if let Some(declared) = &upload.file.declared_sha256 {
            if *declared != sha256 {
                if let Err(err) = store.delete_staging(file).await {
                    tracing::warn!(%file, error = %err, "could not delete a refused upload's parts");
                }
                files.delete_upload(file).await?;
                self.forget(file);
                return Err(ApiError::new(
                    ErrorCode::ChecksumMismatch,
                    format!(
                        "the bytes have SHA-256 {sha256}, not the declared {declared}; nothing was stored"
                    ),
                ));
            }
        }
        let key = BlobStore::blob_key(&sha256);
        let stored = files
            .file_by_content_key(&upload.file.source_id, &sha256)
            .await?
            .is_some()
            || store.exists(&key).await.map_err(blob_error)?;
        if !stored {
            store.assemble(&parts, &key).await.map_err(blob_error)?;
        }
        files
            .complete_file(file, &sha256, &sha256, crate::unix_ms())
            .await
            .map_err(|err| match err {
                StorageError::Invalid(message) => {
                    ApiError::new(ErrorCode::UploadIncomplete, message)
                }
                other => other.into(),
            })?;
        self.forget(file);
        if let Err(err) = store.delete_staging(file).await {
            tracing::warn!(%file, error = %err, "could not delete a complete upload's parts");
        }
        files
            .file(file)
            .await?
            .ok_or_else(|| ApiError::internal(format!("file {file} vanished as it completed")))
    }

    /// Reads a complete file declared `image/*` as an image, once: records
    /// its size and stores its thumbnail, or records why it was not read.
    /// Never fails: the file is returned as it then is (as it was if
    /// something went wrong, so a later completion tries again).
    async fn read_image(&self, state: &AppState, record: FileRecord) -> FileRecord {
        let config = &state.config.file;
        if record.status != FileStatus::Complete
            || !record.mime.starts_with("image/")
            || record.image_known()
            || config.image_max_source_bytes == 0
        {
            return record;
        }
        match self.try_read_image(state, &record).await {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(file = %record.id, error = %err.message, "reading an uploaded image failed");
                record
            }
        }
    }

    async fn try_read_image(
        &self,
        state: &AppState,
        record: &FileRecord,
    ) -> Result<FileRecord, ApiError> {
        let config = &state.config.file;
        let files = state.storage.files();
        let file = record.id;
        if record.size > config.image_max_source_bytes {
            tracing::debug!(%file, size = record.size, "not reading an image this large");
            let image = NewImage::Unread {
                error: IMAGE_TOO_LARGE,
            };
            return Ok(files.record_image(file, image, crate::unix_ms()).await?);
        }
        if let Some(known) = self.read_before(state, record).await? {
            return Ok(known);
        }
        // The permit is taken before the bytes are read into memory and
        // given back only when the decoding thread is done with them (even
        // if this request is dropped meanwhile).
        let permit = self
            .image_reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("image reading has stopped"))?;
        let bytes = self.read_all(record).await?;
        let limits = images::ImageLimits::from(config);
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            images::read(&bytes, &limits)
        })
        .await
        .map_err(|err| ApiError::internal(format!("reading an image: {err}")))?;
        let now = crate::unix_ms();
        let image = match outcome {
            Ok(image) => image,
            Err(refusal) => {
                tracing::debug!(%file, code = refusal.code, reason = %refusal.reason, "an uploaded image was not read");
                let image = NewImage::Unread {
                    error: refusal.code,
                };
                return Ok(files.record_image(file, image, now).await?);
            }
        };
        let thumb = image.thumbnail;
        let size = thumb.bytes.len() as u64;
        let key = BlobStore::blob_key(&thumb.sha256);
        let store = self.source(&record.source_id)?;
        if !store.exists(&key).await.map_err(blob_error)? {
            store.write(&key, thumb.bytes).await.map_err(blob_error)?;
        }
        let name = images::thumbnail_name(&record.name, thumb.extension);
        let thumbnail = NewThumbnail {
            name: &name,
            mime: thumb.mime,
            size,
            sha256: &thumb.sha256,
            content_key: &thumb.sha256,
            width: thumb.width,
            height: thumb.height,
        };
        let image = NewImage::Read {
            width: image.width,
            height: image.height,
            thumbnail: Some(thumbnail),
        };
        Ok(files.record_image(file, image, now).await?)
    }

    /// What identical bytes read before gave (their size, and a thumbnail
    /// of this file's owner sharing their thumbnail's blob), recorded for
    /// `record`; `None` if no such image was read.
    async fn read_before(
        &self,
        state: &AppState,
        record: &FileRecord,
    ) -> Result<Option<FileRecord>, ApiError> {
        let files = state.storage.files();
        let Some(content) = record.content_key.as_deref() else {
            return Ok(None);
        };
        let Some(earlier) = files
            .file_by_content_key(&record.source_id, content)
            .await?
        else {
            return Ok(None);
        };
        let (Some(width), Some(height), Some(thumb_id)) =
            (earlier.width, earlier.height, earlier.thumbnail_file_id)
        else {
            return Ok(None);
        };
        if earlier.id == record.id {
            return Ok(None);
        }
        let Some(thumb) = files.file(thumb_id).await? else {
            return Ok(None);
        };
        let (Some(sha256), Some(content_key), Some(thumb_width), Some(thumb_height)) = (
            thumb.sha256.as_deref(),
            thumb.content_key.as_deref(),
            thumb.width,
            thumb.height,
        ) else {
            return Ok(None);
        };
        let name =
            images::thumbnail_name(&record.name, thumb.name.rsplit('.').next().unwrap_or("jpg"));
        let image = NewImage::Read {
            width,
            height,
            thumbnail: Some(NewThumbnail {
                name: &name,
                mime: &thumb.mime,
                size: thumb.size,
                sha256,
                content_key,
                width: thumb_width,
                height: thumb_height,
            }),
        };
        Ok(Some(
            files
                .record_image(record.id, image, crate::unix_ms())
                .await?,
        ))
    }

    /// All the bytes of a complete file, in memory.
    async fn read_all(&self, record: &FileRecord) -> Result<Vec<u8>, ApiError> {
        let mut stream = self.read(record, 0..record.size).await?;
        let mut bytes = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|err| ApiError::internal(format!("reading file {}: {err}", record.id)))?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The bytes `range` of a complete file.
    pub async fn read(
        &self,
        record: &FileRecord,
        range: std::ops::Range<u64>,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static + use<>, ApiError>
    {
        let content = record
            .content_key
            .as_deref()
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the file is not complete"))?;
        self.source(&record.source_id)?
            .read(&BlobStore::blob_key(content), range)
            .await
            .map_err(blob_error)
    }

    /// Deletes uploads abandoned before `before_ms` and their staged parts;
    /// returns how many.
    pub async fn collect_abandoned(
        &self,
        state: &AppState,
        before_ms: i64,
    ) -> Result<usize, ApiError> {
        let files = state.storage.files();
        let expired = files.expired_uploads(before_ms, COLLECT_BATCH).await?;
        let mut collected = 0;
        for file in expired {
            // Parts first: if deleting the row fails, the next pass finds
            // the upload again and nothing is left without a row.
            if let Ok(store) = self.source(&file.source_id) {
                store.delete_staging(file.id).await.map_err(blob_error)?;
            }
            if files.delete_upload(file.id).await? {
                collected += 1;
            }
            self.forget(file.id);
        }
        Ok(collected)
    }

    /// The running hash of `file` at `offset`, if it is kept here (a fresh
    /// one at offset 0).
    fn running_hash(&self, file: FileId, offset: u64) -> Option<Sha256> {
        if offset == 0 {
            return Some(Sha256::new());
        }
        let hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        hashes
            .get(&file)
            .filter(|(at, _)| *at == offset)
            .map(|(_, hash)| hash.clone())
    }

    fn keep_running_hash(&self, file: FileId, offset: u64, hash: Sha256) {
        let mut hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        if hashes.len() < RUNNING_HASHES_MAX || hashes.contains_key(&file) {
            hashes.insert(file, (offset, hash));
        }
    }

    /// The SHA-256 (hex) of `file`'s `size` bytes, if its running hash got
    /// that far here.
    fn finished_hash(&self, file: FileId, size: u64) -> Option<String> {
        let hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        hashes
            .get(&file)
            .filter(|(at, _)| *at == size)
            .map(|(_, hash)| hex::encode(hash.clone().finalize()))
            .or_else(|| (size == 0).then(|| hex::encode(Sha256::digest(b""))))
    }

    fn forget(&self, file: FileId) {
        self.hashes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&file);
    }
}

fn progress(file: &FileRecord, offset: u64) -> UploadProgress {
    UploadProgress {
        file_id: file.id,
        offset,
        size: file.size,
        status: wire_status(file.status),
        sha256: file.sha256.clone(),
        width: file.width,
        height: file.height,
        thumbnail_file_id: file.thumbnail_file_id,
        image_error: file.image_error.clone(),
    }
}

pub(crate) fn wire_status(status: FileStatus) -> WireStatus {
    match status {
        FileStatus::Pending => WireStatus::Pending,
        FileStatus::Complete => WireStatus::Complete,
    }
}

/// How often to look for abandoned uploads: half the upload token lifetime,
/// within [1 s, 60 s].
pub(crate) fn collect_interval(config: &Config) -> Duration {
    Duration::from_secs(config.file.upload_token_ttl_secs / 2)
        .clamp(COLLECT_INTERVAL_MIN, COLLECT_INTERVAL_MAX)
}

/// Collects abandoned uploads until shutdown. An upload is abandoned when
/// its token expired more than a request timeout ago, so a completion that
/// started just before the expiry finishes first.
pub(crate) async fn run_collector(state: AppState) {
    let mut every = tokio::time::interval(collect_interval(&state.config));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = i64::try_from(state.config.server.request_timeout_ms).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = every.tick() => {
                let before = crate::unix_ms().saturating_sub(grace);
                match state.files.collect_abandoned(&state, before).await {
                    Ok(0) => {}
                    Ok(collected) => tracing::info!(collected, "deleted abandoned uploads"),
                    Err(err) => tracing::warn!(error = %err.message, "collecting abandoned uploads failed"),
                }
            }
        }
    }
}
