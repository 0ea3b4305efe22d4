//! [`FileStore`] on PostgreSQL.
//!
//! Decisions that read before they write lock the row they depend on: a
//! quota check locks the owner's user row (so two uploads of one user are
//! checked one after the other, from any node), a chunk or a completion
//! locks the upload's token row.

use async_trait::async_trait;
use conclave_core::{ChannelId, FileId, UserId};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::{BACKEND, Fail, PostgresStorage, retrying, sql_id, sql_pos, unsigned};
use crate::files::FileStatus;
use crate::metrics::timed;
use crate::{
    ChunkOutcome, FileRecord, FileStore, NewImage, NewUpload, PartRecord, StorageError,
    UploadRecord,
};

/// The columns of [`FileRow`], in order, then the image's (read by name).
const FILE_COLUMNS: &str = "f.id, f.owner_id, f.name, f.mime, f.size, f.declared_sha256, f.sha256, \
     f.content_key, f.source_id, f.status, f.created_at, f.expires_at, f.completed_at, \
     f.width, f.height, f.thumbnail_file_id, f.image_error";

type FileRow = (
    i64,
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

fn record(row: FileRow) -> Result<FileRecord, StorageError> {
    let (
        id,
        owner_id,
        name,
        mime,
        size,
        declared_sha256,
        sha256,
        content_key,
        source_id,
        status,
        created_at,
        expires_at,
        completed_at,
    ) = row;
    Ok(FileRecord {
        id: FileId::new(unsigned(id)),
        owner_id: UserId::new(unsigned(owner_id)),
        name,
        mime,
        size: unsigned(size),
        declared_sha256,
        sha256,
        content_key,
        source_id,
        status: FileStatus::parse(&status)?,
        created_at_ms: created_at,
        expires_at_ms: expires_at,
        completed_at_ms: completed_at,
        width: None,
        height: None,
        thumbnail_file_id: None,
        image_error: None,
    })
}

/// A width or height as stored.
fn pixels(raw: Option<i64>) -> Result<Option<u32>, StorageError> {
    raw.map(|raw| {
        u32::try_from(raw)
            .map_err(|_| StorageError::Corrupt(format!("image dimension {raw} is out of range")))
    })
    .transpose()
}

/// A file from a row that has [`FILE_COLUMNS`] first.
fn file_from_row(row: &PgRow) -> Result<FileRecord, StorageError> {
    let mut file = record(<FileRow as sqlx::FromRow<_>>::from_row(row)?)?;
    file.width = pixels(row.try_get("width")?)?;
    file.height = pixels(row.try_get("height")?)?;
    file.thumbnail_file_id = row
        .try_get::<Option<i64>, _>("thumbnail_file_id")?
        .map(|id| FileId::new(unsigned(id)));
    file.image_error = row.try_get("image_error")?;
    Ok(file)
}

/// How an upload is looked up.
enum UploadKey {
    Token([u8; 32]),
    File(FileId),
}

impl PostgresStorage {
    async fn find_upload(&self, by: UploadKey) -> Result<Option<UploadRecord>, StorageError> {
        let condition = match by {
            UploadKey::Token(_) => "t.token_hash = $1",
            UploadKey::File(_) => "f.id = $1",
        };
        let sql = format!(
            "SELECT {FILE_COLUMNS}, t.received, t.expires_at AS token_expires_at, t.used_at \
             FROM files f JOIN upload_tokens t ON t.file_id = f.id WHERE {condition}"
        );
        let query = sqlx::query(&sql);
        let query = match by {
            UploadKey::Token(hash) => query.bind(hash.to_vec()),
            UploadKey::File(id) => query.bind(sql_id(id.get())),
        };
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let file = file_from_row(&row)?;
        Ok(Some(UploadRecord {
            file,
            received: unsigned(row.try_get("received")?),
            expires_at_ms: row.try_get("token_expires_at")?,
            used_at_ms: row.try_get("used_at")?,
        }))
    }

    async fn create_upload_once(&self, upload: &NewUpload<'_>) -> Result<FileRecord, Fail> {
        let mut tx = self.pool.begin().await?;
        // Uploads of one owner queue on the owner's row, so the sum below
        // cannot miss a concurrent one.
        let owner: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE")
                .bind(sql_id(upload.owner.get()))
                .fetch_optional(&mut *tx)
                .await?;
        if owner.is_none() {
            return Err(StorageError::NotFound(format!("no user {}", upload.owner)).into());
        }
        let (used,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM files \
             WHERE owner_id = $1 AND (status = 'complete' OR expires_at > $2)",
        )
        .bind(sql_id(upload.owner.get()))
        .bind(upload.now_ms)
        .fetch_one(&mut *tx)
        .await?;
        if unsigned(used).saturating_add(upload.size) > upload.quota_bytes {
            return Err(StorageError::LimitReached(format!(
                "{} bytes stored of a {} byte quota; {} more do not fit",
                used, upload.quota_bytes, upload.size
            ))
            .into());
        }
        let row = sqlx::query(&format!(
            "INSERT INTO files AS f (owner_id, name, mime, size, declared_sha256, source_id, status, \
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8) \
             RETURNING {FILE_COLUMNS}"
        ))
        .bind(sql_id(upload.owner.get()))
        .bind(upload.name)
        .bind(upload.mime)
        .bind(sql_pos(upload.size))
        .bind(upload.declared_sha256)
        .bind(upload.source_id)
        .bind(upload.now_ms)
        .bind(upload.expires_at_ms)
        .fetch_one(&mut *tx)
        .await?;
        let file = file_from_row(&row)?;
        sqlx::query(
            "INSERT INTO upload_tokens (file_id, token_hash, received, expires_at) VALUES ($1, $2, 0, $3)",
        )
        .bind(sql_id(file.id.get()))
        .bind(&upload.token_hash[..])
        .bind(upload.expires_at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(file)
    }

    async fn commit_chunk_once(
        &self,
        file: FileId,
        start: u64,
        end: u64,
        key: &str,
        now_ms: i64,
    ) -> Result<ChunkOutcome, Fail> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(i64, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT f.size, t.received, t.expires_at, t.used_at FROM files f \
             JOIN upload_tokens t ON t.file_id = f.id WHERE f.id = $1 AND f.status = 'pending' \
             FOR NO KEY UPDATE OF t",
        )
        .bind(sql_id(file.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((size, received, expires_at, used_at)) = row else {
            return Err(StorageError::NotFound(format!("no pending upload {file}")).into());
        };
        if used_at.is_some() || expires_at <= now_ms {
            return Err(StorageError::NotFound(format!(
                "the upload of file {file} is spent or expired"
            ))
            .into());
        }
        if end <= start || end > unsigned(size) {
            return Err(StorageError::Invalid(format!(
                "chunk {start}..{end} does not fit a {size} byte file"
            ))
            .into());
        }
        if unsigned(received) != start {
            return Ok(ChunkOutcome::Stale {
                received: unsigned(received),
            });
        }
        sqlx::query("UPDATE upload_tokens SET received = $1 WHERE file_id = $2")
            .bind(sql_pos(end))
            .bind(sql_id(file.get()))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO upload_parts (file_id, start_offset, end_offset, key) VALUES ($1, $2, $3, $4)",
        )
        .bind(sql_id(file.get()))
        .bind(sql_pos(start))
        .bind(sql_pos(end))
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(ChunkOutcome::Committed { received: end })
    }

    async fn complete_file_once(
        &self,
        file: FileId,
        sha256: &str,
        content_key: &str,
        now_ms: i64,
    ) -> Result<bool, Fail> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT f.status, f.size, t.received FROM files f \
             LEFT JOIN upload_tokens t ON t.file_id = f.id WHERE f.id = $1 FOR NO KEY UPDATE OF f",
        )
        .bind(sql_id(file.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, size, received)) = row else {
            return Err(StorageError::NotFound(format!("no file {file}")).into());
        };
        if FileStatus::parse(&status)? == FileStatus::Complete {
            return Ok(false);
        }
        let received = received.unwrap_or(0);
        if received != size {
            return Err(StorageError::Invalid(format!(
                "file {file} has {received} of {size} bytes"
            ))
            .into());
        }
        sqlx::query(
            "UPDATE files SET status = 'complete', sha256 = $1, content_key = $2, completed_at = $3 \
             WHERE id = $4",
        )
        .bind(sha256)
        .bind(content_key)
        .bind(now_ms)
        .bind(sql_id(file.get()))
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE upload_tokens SET used_at = $1 WHERE file_id = $2")
            .bind(now_ms)
            .bind(sql_id(file.get()))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM upload_parts WHERE file_id = $1")
            .bind(sql_id(file.get()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_image_once(
        &self,
        file: FileId,
        image: &NewImage<'_>,
        now_ms: i64,
    ) -> Result<FileRecord, Fail> {
        let mut tx = self.pool.begin().await?;
        // The image's row is locked first, so two recorders of one image
        // queue and the second finds it known.
        let row = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = $1 FOR NO KEY UPDATE"
        ))
        .bind(sql_id(file.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StorageError::NotFound(format!("no file {file}")).into());
        };
        let current = file_from_row(&row)?;
        if current.status != FileStatus::Complete {
            return Err(
                StorageError::Invalid(format!("file {file} has not finished uploading")).into(),
            );
        }
        if current.image_known() {
            return Ok(current);
        }
        match image {
            NewImage::Read {
                width,
                height,
                thumbnail,
            } => {
                let thumbnail_id = match thumbnail {
                    Some(thumb) => {
                        let (id,): (i64,) = sqlx::query_as(
                            "INSERT INTO files (owner_id, name, mime, size, sha256, content_key, \
                             source_id, status, created_at, expires_at, completed_at, width, height) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, 'complete', $8, $8, $8, $9, $10) \
                             RETURNING id",
                        )
                        .bind(sql_id(current.owner_id.get()))
                        .bind(thumb.name)
                        .bind(thumb.mime)
                        .bind(sql_pos(thumb.size))
                        .bind(thumb.sha256)
                        .bind(thumb.content_key)
                        .bind(&current.source_id)
                        .bind(now_ms)
                        .bind(i64::from(thumb.width))
                        .bind(i64::from(thumb.height))
                        .fetch_one(&mut *tx)
                        .await?;
                        Some(id)
                    }
                    None => None,
                };
                sqlx::query(
                    "UPDATE files SET width = $1, height = $2, thumbnail_file_id = $3 WHERE id = $4",
                )
                .bind(i64::from(*width))
                .bind(i64::from(*height))
                .bind(thumbnail_id)
                .bind(sql_id(file.get()))
                .execute(&mut *tx)
                .await?;
            }
            NewImage::Unread { error } => {
                sqlx::query("UPDATE files SET image_error = $1 WHERE id = $2")
                    .bind(*error)
                    .bind(sql_id(file.get()))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let row = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = $1"
        ))
        .bind(sql_id(file.get()))
        .fetch_one(&mut *tx)
        .await?;
        let updated = file_from_row(&row)?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn delete_upload_once(&self, file: FileId) -> Result<bool, Fail> {
        let mut tx = self.pool.begin().await?;
        let pending: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM files WHERE id = $1 AND status = 'pending' FOR UPDATE")
                .bind(sql_id(file.get()))
                .fetch_optional(&mut *tx)
                .await?;
        if pending.is_none() {
            return Ok(false);
        }
        for statement in [
            "DELETE FROM upload_parts WHERE file_id = $1",
            "DELETE FROM upload_tokens WHERE file_id = $1",
            "DELETE FROM file_references WHERE file_id = $1",
            "DELETE FROM files WHERE id = $1",
        ] {
            sqlx::query(statement)
                .bind(sql_id(file.get()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl FileStore for PostgresStorage {
    async fn create_upload(&self, upload: NewUpload<'_>) -> Result<FileRecord, StorageError> {
        timed(
            BACKEND,
            "create_upload",
            retrying(|| self.create_upload_once(&upload)),
        )
        .await
    }

    async fn file(&self, id: FileId) -> Result<Option<FileRecord>, StorageError> {
        timed(BACKEND, "file", async {
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = $1"
            ))
            .bind(sql_id(id.get()))
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(file_from_row).transpose()
        })
        .await
    }

    async fn upload_by_token(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<UploadRecord>, StorageError> {
        timed(
            BACKEND,
            "upload_by_token",
            self.find_upload(UploadKey::Token(token_hash)),
        )
        .await
    }

    async fn upload(&self, file: FileId) -> Result<Option<UploadRecord>, StorageError> {
        timed(BACKEND, "upload", self.find_upload(UploadKey::File(file))).await
    }

    async fn commit_chunk(
        &self,
        file: FileId,
        start: u64,
        end: u64,
        key: &str,
        now_ms: i64,
    ) -> Result<ChunkOutcome, StorageError> {
        timed(
            BACKEND,
            "commit_chunk",
            retrying(|| self.commit_chunk_once(file, start, end, key, now_ms)),
        )
        .await
    }

    async fn parts(&self, file: FileId) -> Result<Vec<PartRecord>, StorageError> {
        timed(BACKEND, "upload_parts", async {
            let rows: Vec<(i64, i64, String)> = sqlx::query_as(
                "SELECT start_offset, end_offset, key FROM upload_parts WHERE file_id = $1 \
                 ORDER BY start_offset",
            )
            .bind(sql_id(file.get()))
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(start, end, key)| PartRecord {
                    start: unsigned(start),
                    end: unsigned(end),
                    key,
                })
                .collect())
        })
        .await
    }

    async fn complete_file(
        &self,
        file: FileId,
        sha256: &str,
        content_key: &str,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        timed(
            BACKEND,
            "complete_file",
            retrying(|| self.complete_file_once(file, sha256, content_key, now_ms)),
        )
        .await
    }

    async fn delete_upload(&self, file: FileId) -> Result<bool, StorageError> {
        timed(
            BACKEND,
            "delete_upload",
            retrying(|| self.delete_upload_once(file)),
        )
        .await
    }

    async fn file_by_content_key(
        &self,
        source_id: &str,
        content_key: &str,
    ) -> Result<Option<FileRecord>, StorageError> {
        timed(BACKEND, "file_by_content_key", async {
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.source_id = $1 AND f.content_key = $2 \
                 AND f.status = 'complete' ORDER BY f.id LIMIT 1"
            ))
            .bind(source_id)
            .bind(content_key)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(file_from_row).transpose()
        })
        .await
    }

    async fn usage(&self, owner: UserId, now_ms: i64) -> Result<u64, StorageError> {
        timed(BACKEND, "file_usage", async {
            let (used,): (i64,) = sqlx::query_as(
                "SELECT COALESCE(SUM(size), 0)::BIGINT FROM files \
                 WHERE owner_id = $1 AND (status = 'complete' OR expires_at > $2)",
            )
            .bind(sql_id(owner.get()))
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
            Ok(unsigned(used))
        })
        .await
    }

    async fn expired_uploads(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StorageError> {
        timed(BACKEND, "expired_uploads", async {
            let rows = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.status = 'pending' AND f.expires_at < $1 \
                 ORDER BY f.expires_at, f.id LIMIT $2"
            ))
            .bind(before_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(file_from_row).collect()
        })
        .await
    }

    async fn record_image(
        &self,
        file: FileId,
        image: NewImage<'_>,
        now_ms: i64,
    ) -> Result<FileRecord, StorageError> {
        timed(
            BACKEND,
            "record_image",
            retrying(|| self.record_image_once(file, &image, now_ms)),
        )
        .await
    }

    async fn add_reference(
        &self,
        file: FileId,
        channel: ChannelId,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        timed(BACKEND, "add_file_reference", async {
            sqlx::query(
                "INSERT INTO file_references (file_id, channel_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (file_id, channel_id) DO NOTHING",
            )
            .bind(sql_id(file.get()))
            .bind(sql_id(channel.get()))
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }

    async fn referenced_for(&self, file: FileId, user: UserId) -> Result<bool, StorageError> {
        timed(BACKEND, "file_referenced_for", async {
            let row: Option<(i32,)> = sqlx::query_as(
                "SELECT 1 FROM file_references r JOIN channel_members m \
                 ON m.channel_id = r.channel_id AND m.user_id = $1 WHERE r.file_id = $2 LIMIT 1",
            )
            .bind(sql_id(user.get()))
            .bind(sql_id(file.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.is_some())
        })
        .await
    }
}
