//! [`FileStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{ChannelId, FileId, UserId};
use sqlx::Row as _;
use sqlx::sqlite::SqliteRow;

use super::{BACKEND, SqliteStorage, sql_id};
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

fn unsigned(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

fn sql_size(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

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
fn file_from_row(row: &SqliteRow) -> Result<FileRecord, StorageError> {
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

impl SqliteStorage {
    async fn find_upload(&self, by: UploadKey) -> Result<Option<UploadRecord>, StorageError> {
        let condition = match by {
            UploadKey::Token(_) => "t.token_hash = ?",
            UploadKey::File(_) => "f.id = ?",
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
}

#[async_trait]
impl FileStore for SqliteStorage {
    async fn create_upload(&self, upload: NewUpload<'_>) -> Result<FileRecord, StorageError> {
        timed(BACKEND, "create_upload", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            // Under the writer lock, so no other upload can slip in between
            // the sum and the insert.
            let (used,): (i64,) = sqlx::query_as(
                "SELECT COALESCE(SUM(size), 0) FROM files \
                 WHERE owner_id = ? AND (status = 'complete' OR expires_at > ?)",
            )
            .bind(sql_id(upload.owner.get()))
            .bind(upload.now_ms)
            .fetch_one(&mut *tx)
            .await?;
            if unsigned(used).saturating_add(upload.size) > upload.quota_bytes {
                return Err(StorageError::LimitReached(format!(
                    "{} bytes stored of a {} byte quota; {} more do not fit",
                    used, upload.quota_bytes, upload.size
                )));
            }
            let row = sqlx::query(&format!(
                "INSERT INTO files (owner_id, name, mime, size, declared_sha256, source_id, status, \
                 created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) \
                 RETURNING {}",
                FILE_COLUMNS.replace("f.", "")
            ))
            .bind(sql_id(upload.owner.get()))
            .bind(upload.name)
            .bind(upload.mime)
            .bind(sql_size(upload.size))
            .bind(upload.declared_sha256)
            .bind(upload.source_id)
            .bind(upload.now_ms)
            .bind(upload.expires_at_ms)
            .fetch_one(&mut *tx)
            .await?;
            let file = file_from_row(&row)?;
            sqlx::query(
                "INSERT INTO upload_tokens (file_id, token_hash, received, expires_at) VALUES (?, ?, 0, ?)",
            )
            .bind(sql_id(file.id.get()))
            .bind(&upload.token_hash[..])
            .bind(upload.expires_at_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(file)
        })
        .await
    }

    async fn file(&self, id: FileId) -> Result<Option<FileRecord>, StorageError> {
        timed(BACKEND, "file", async {
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = ?"
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
        timed(BACKEND, "commit_chunk", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row: Option<(i64, i64, i64, Option<i64>)> = sqlx::query_as(
                "SELECT f.size, t.received, t.expires_at, t.used_at FROM files f \
                 JOIN upload_tokens t ON t.file_id = f.id WHERE f.id = ? AND f.status = 'pending'",
            )
            .bind(sql_id(file.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((size, received, expires_at, used_at)) = row else {
                return Err(StorageError::NotFound(format!("no pending upload {file}")));
            };
            if used_at.is_some() || expires_at <= now_ms {
                return Err(StorageError::NotFound(format!(
                    "the upload of file {file} is spent or expired"
                )));
            }
            if end <= start || end > unsigned(size) {
                return Err(StorageError::Invalid(format!(
                    "chunk {start}..{end} does not fit a {size} byte file"
                )));
            }
            if unsigned(received) != start {
                return Ok(ChunkOutcome::Stale {
                    received: unsigned(received),
                });
            }
            sqlx::query("UPDATE upload_tokens SET received = ? WHERE file_id = ?")
                .bind(sql_size(end))
                .bind(sql_id(file.get()))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO upload_parts (file_id, start_offset, end_offset, key) VALUES (?, ?, ?, ?)",
            )
            .bind(sql_id(file.get()))
            .bind(sql_size(start))
            .bind(sql_size(end))
            .bind(key)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ChunkOutcome::Committed { received: end })
        })
        .await
    }

    async fn parts(&self, file: FileId) -> Result<Vec<PartRecord>, StorageError> {
        timed(BACKEND, "upload_parts", async {
            let rows: Vec<(i64, i64, String)> = sqlx::query_as(
                "SELECT start_offset, end_offset, key FROM upload_parts WHERE file_id = ? ORDER BY start_offset",
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
        timed(BACKEND, "complete_file", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
                "SELECT f.status, f.size, t.received FROM files f \
                 LEFT JOIN upload_tokens t ON t.file_id = f.id WHERE f.id = ?",
            )
            .bind(sql_id(file.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((status, size, received)) = row else {
                return Err(StorageError::NotFound(format!("no file {file}")));
            };
            if FileStatus::parse(&status)? == FileStatus::Complete {
                return Ok(false);
            }
            let received = received.unwrap_or(0);
            if received != size {
                return Err(StorageError::Invalid(format!(
                    "file {file} has {received} of {size} bytes"
                )));
            }
            sqlx::query(
                "UPDATE files SET status = 'complete', sha256 = ?, content_key = ?, completed_at = ? \
                 WHERE id = ?",
            )
            .bind(sha256)
            .bind(content_key)
            .bind(now_ms)
            .bind(sql_id(file.get()))
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE upload_tokens SET used_at = ? WHERE file_id = ?")
                .bind(now_ms)
                .bind(sql_id(file.get()))
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM upload_parts WHERE file_id = ?")
                .bind(sql_id(file.get()))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn delete_upload(&self, file: FileId) -> Result<bool, StorageError> {
        timed(BACKEND, "delete_upload", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let pending: Option<(i64,)> =
                sqlx::query_as("SELECT id FROM files WHERE id = ? AND status = 'pending'")
                    .bind(sql_id(file.get()))
                    .fetch_optional(&mut *tx)
                    .await?;
            if pending.is_none() {
                return Ok(false);
            }
            for statement in [
                "DELETE FROM upload_parts WHERE file_id = ?",
                "DELETE FROM upload_tokens WHERE file_id = ?",
                "DELETE FROM file_references WHERE file_id = ?",
                "DELETE FROM files WHERE id = ?",
            ] {
                sqlx::query(statement)
                    .bind(sql_id(file.get()))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn file_by_content_key(
        &self,
        source_id: &str,
        content_key: &str,
    ) -> Result<Option<FileRecord>, StorageError> {
        timed(BACKEND, "file_by_content_key", async {
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.source_id = ? AND f.content_key = ? \
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
                "SELECT COALESCE(SUM(size), 0) FROM files \
                 WHERE owner_id = ? AND (status = 'complete' OR expires_at > ?)",
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
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.status = 'pending' AND f.expires_at < ? \
                 ORDER BY f.expires_at, f.id LIMIT ?"
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
        timed(BACKEND, "record_image", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = ?"
            ))
            .bind(sql_id(file.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StorageError::NotFound(format!("no file {file}")));
            };
            let current = file_from_row(&row)?;
            if current.status != FileStatus::Complete {
                return Err(StorageError::Invalid(format!(
                    "file {file} has not finished uploading"
                )));
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
                                 VALUES (?, ?, ?, ?, ?, ?, ?, 'complete', ?, ?, ?, ?, ?) RETURNING id",
                            )
                            .bind(sql_id(current.owner_id.get()))
                            .bind(thumb.name)
                            .bind(thumb.mime)
                            .bind(sql_size(thumb.size))
                            .bind(thumb.sha256)
                            .bind(thumb.content_key)
                            .bind(&current.source_id)
                            .bind(now_ms)
                            .bind(now_ms)
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
                        "UPDATE files SET width = ?, height = ?, thumbnail_file_id = ? WHERE id = ?",
                    )
                    .bind(i64::from(width))
                    .bind(i64::from(height))
                    .bind(thumbnail_id)
                    .bind(sql_id(file.get()))
                    .execute(&mut *tx)
                    .await?;
                }
                NewImage::Unread { error } => {
                    sqlx::query("UPDATE files SET image_error = ? WHERE id = ?")
                        .bind(error)
                        .bind(sql_id(file.get()))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let row = sqlx::query(&format!(
                "SELECT {FILE_COLUMNS} FROM files f WHERE f.id = ?"
            ))
            .bind(sql_id(file.get()))
            .fetch_one(&mut *tx)
            .await?;
            let updated = file_from_row(&row)?;
            tx.commit().await?;
            Ok(updated)
        })
        .await
    }

    async fn add_reference(
        &self,
        file: FileId,
        channel: ChannelId,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        timed(BACKEND, "add_file_reference", async {
            let _writer = self.write_lock.lock().await;
            sqlx::query(
                "INSERT INTO file_references (file_id, channel_id, created_at) VALUES (?, ?, ?) \
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
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT 1 FROM file_references r JOIN channel_members m \
                 ON m.channel_id = r.channel_id AND m.user_id = ? WHERE r.file_id = ? LIMIT 1",
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
