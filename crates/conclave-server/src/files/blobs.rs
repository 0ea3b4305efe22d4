//! One configured storage source (a local directory or an S3 bucket)
//! behind OpenDAL, with the object layout files use:
//!
//! - `staging/<file id>/<start offset>-<nonce>`: one received chunk. The
//!   nonce makes every writer's object its own; only the chunk the database
//!   recorded counts, and the whole `staging/<file id>/` prefix goes when
//!   the upload completes or is abandoned.
//! - `blobs/<sha256>`: the bytes of every complete file with that SHA-256.
//!
//! Writes are atomic on both kinds: S3 makes an object visible only when it
//! is complete, and the local directory writes into `<root>/.tmp` and
//! renames. So an object under `blobs/` always holds all its bytes.

use anyhow::Context as _;
use bytes::Bytes;
use conclave_config::{Config, StorageKind, StorageSourceConfig};
use conclave_core::FileId;
use conclave_storage::PartRecord;
use opendal::{Operator, Writer};

/// Bytes buffered before an S3 writer sends a multipart part (S3's minimum
/// part is 5 MiB). One such buffer per chunk being received.
const S3_PART_BYTES: usize = 8 * 1024 * 1024;

/// The most bytes one `copy_from` call may move.
const COPY_SLICE_MAX_BYTES: u64 = 4 * 1024 * 1024 * 1024;

pub(crate) struct BlobStore {
    op: Operator,
    kind: StorageKind,
}

impl BlobStore {
    pub fn open(config: &Config, source: &StorageSourceConfig) -> anyhow::Result<Self> {
        let op = match source.kind {
            StorageKind::Local => {
                let root = config.local_files_dir(source);
                std::fs::create_dir_all(&root)
                    .with_context(|| format!("creating the files directory {}", root.display()))?;
                let root = root
                    .canonicalize()
                    .with_context(|| format!("resolving {}", root.display()))?;
                let builder = opendal::services::Fs::default()
                    .root(&root.to_string_lossy())
                    .atomic_write_dir(&root.join(".tmp").to_string_lossy());
                Operator::new(builder)?
            }
            StorageKind::S3 => {
                // S3 speaks HTTP through reqwest, whose rustls takes the
                // process's crypto provider. Both installs keep the first
                // one, so a second S3 source changes nothing.
                let _ = rustls::crypto::ring::default_provider().install_default();
                opendal_http_transport_reqwest::install_default();
                let mut builder = opendal::services::S3::default()
                    .bucket(source.bucket.as_deref().unwrap_or_default())
                    .region(source.region.as_deref().unwrap_or("us-east-1"))
                    .root(
                        &source
                            .root
                            .as_ref()
                            .map(|root| root.to_string_lossy().into_owned())
                            .unwrap_or_else(|| "/".to_owned()),
                    );
                if let Some(endpoint) = &source.endpoint {
                    builder = builder.endpoint(endpoint);
                }
                if let (Some(id), Some(secret)) = (&source.access_key_id, &source.secret_access_key)
                {
                    builder = builder.access_key_id(id).secret_access_key(secret.expose());
                }
                Operator::new(builder)?
            }
        };
        Ok(Self {
            op,
            kind: source.kind,
        })
    }

    pub fn blob_key(sha256: &str) -> String {
        format!("blobs/{sha256}")
    }

    fn staging_prefix(file: FileId) -> String {
        format!("staging/{file}/")
    }

    pub fn part_key(file: FileId, start: u64, nonce: &str) -> String {
        format!("{}{start:020}-{nonce}", Self::staging_prefix(file))
    }

    /// A writer for a new object at `key`.
    pub async fn writer(&self, key: &str) -> opendal::Result<Writer> {
        match self.kind {
            StorageKind::Local => self.op.writer(key).await,
            StorageKind::S3 => self.op.writer_with(key).chunk(S3_PART_BYTES).await,
        }
    }

    /// Writes a small object whole (atomically, as every write here).
    pub async fn write(&self, key: &str, bytes: Vec<u8>) -> opendal::Result<()> {
        self.op.write(key, bytes).await.map(|_| ())
    }

    pub async fn exists(&self, key: &str) -> opendal::Result<bool> {
        self.op.exists(key).await
    }

    pub async fn delete(&self, key: &str) -> opendal::Result<()> {
        self.op.delete(key).await
    }

    /// Deletes everything staged for an upload.
    pub async fn delete_staging(&self, file: FileId) -> opendal::Result<()> {
        self.op
            .delete_with(&Self::staging_prefix(file))
            .recursive(true)
            .await
    }

    /// Stores the recorded parts, in order, as the object `to`. A single
    /// part is renamed where the store can (no copy at all).
    pub async fn assemble(&self, parts: &[PartRecord], to: &str) -> opendal::Result<()> {
        if let [part] = parts {
            if self.op.info().capability().rename {
                return self.op.rename(&part.key, to).await;
            }
        }
        let mut writer = self.writer(to).await?;
        for part in parts {
            let len = part.end - part.start;
            let mut at = 0;
            while at < len {
                let next = (at + COPY_SLICE_MAX_BYTES).min(len);
                if let Err(err) = writer.copy_from(&part.key, at..next).await {
                    let _ = writer.abort().await;
                    return Err(err);
                }
                at = next;
            }
        }
        writer.close().await.map(|_| ())
    }

    /// The bytes `range` of the object at `key`, as a stream.
    pub async fn read(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> opendal::Result<
        impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static + use<>,
    > {
        self.op.reader(key).await?.into_bytes_stream(range).await
    }
}
