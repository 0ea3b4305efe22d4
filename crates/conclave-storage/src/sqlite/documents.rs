//! [`DocumentStore`] on SQLite.

use async_trait::async_trait;
use conclave_core::{ChannelId, DocumentId, UserId};

use super::sql_id;
use super::{BACKEND, SqliteStorage, is_unique_violation};
use crate::documents::check_version_name;
use crate::metrics::timed;
use crate::{DocumentRecord, DocumentStore, StorageError, StoredDocument, VersionRecord};

const DOCUMENT_COLUMNS: &str = "id, name, owner_id, channel_id, created_at";

/// [`StorageError::NotFound`] unless the document exists.
async fn require_document(
    conn: &mut sqlx::SqliteConnection,
    document: DocumentId,
) -> Result<(), StorageError> {
    let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM documents WHERE id = ?")
        .bind(sql_id(document.get()))
        .fetch_optional(conn)
        .await?;
    match exists {
        Some(_) => Ok(()),
        None => Err(StorageError::NotFound(format!("no document {document}"))),
    }
}

type DocumentRow = (i64, String, i64, Option<i64>, i64);

/// A version without its state; `length(state)` reads the size from the
/// record header, not the bytes.
const VERSION_COLUMNS: &str =
    "document_id, version, name, created_by, created_at, covers_seq, length(state)";

type VersionRow = (i64, i64, String, i64, i64, i64, i64);

fn version_record(
    (document_id, version, name, created_by, created_at, covers_seq, size): VersionRow,
) -> VersionRecord {
    VersionRecord {
        document_id: DocumentId::new(document_id as u64),
        version: seq(version),
        name,
        created_by: UserId::new(created_by as u64),
        created_at_ms: created_at,
        covers_seq: seq(covers_seq),
        size_bytes: seq(size),
    }
}

fn sql_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

fn record((id, name, owner_id, channel_id, created_at): DocumentRow) -> DocumentRecord {
    DocumentRecord {
        id: DocumentId::new(id as u64),
        name,
        owner_id: UserId::new(owner_id as u64),
        channel_id: channel_id.map(|id| ChannelId::new(id as u64)),
        created_at_ms: created_at,
    }
}

#[async_trait]
impl DocumentStore for SqliteStorage {
    async fn create_document(
        &self,
        name: &str,
        owner: UserId,
        channel: Option<ChannelId>,
        now_ms: i64,
    ) -> Result<DocumentRecord, StorageError> {
        timed(BACKEND, "create_document", async {
            let _writer = self.write_lock.lock().await;
            let row: DocumentRow = sqlx::query_as(&format!(
                "INSERT INTO documents (name, owner_id, channel_id, created_at) VALUES (?, ?, ?, ?) \
                 RETURNING {DOCUMENT_COLUMNS}"
            ))
            .bind(name)
            .bind(sql_id(owner.get()))
            .bind(channel.map(|c| sql_id(c.get())))
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await
            .map_err(|err| {
                if is_unique_violation(&err) {
                    StorageError::Conflict(format!("a document named `{name}` exists"))
                } else {
                    err.into()
                }
            })?;
            Ok(record(row))
        })
        .await
    }

    async fn document_by_name(&self, name: &str) -> Result<Option<DocumentRecord>, StorageError> {
        timed(BACKEND, "document_by_name", async {
            let row: Option<DocumentRow> = sqlx::query_as(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE name = ?"
            ))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(record))
        })
        .await
    }

    async fn document(&self, id: DocumentId) -> Result<Option<DocumentRecord>, StorageError> {
        timed(BACKEND, "document", async {
            let row: Option<DocumentRow> = sqlx::query_as(&format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = ?"
            ))
            .bind(sql_id(id.get()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(record))
        })
        .await
    }

    async fn append_update(
        &self,
        document: DocumentId,
        update: &[u8],
        now_ms: i64,
    ) -> Result<u64, StorageError> {
        timed(BACKEND, "append_update", async {
            // Updates are committed in groups with message sends: many
            // writes, one transaction and one fsync (see `group_commit`).
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.queue_write(super::group_commit::WriteRequest::Append {
                update: super::group_commit::OwnedUpdate {
                    document,
                    bytes: update.to_vec(),
                    now_ms,
                },
                reply,
            })
            .await?;
            answer.await.map_err(|_| StorageError::Closed)?
        })
        .await
    }

    async fn load(&self, document: DocumentId) -> Result<StoredDocument, StorageError> {
        timed(BACKEND, "load_document", async {
            // One read transaction: a compaction cannot slip in between the
            // snapshot and the updates.
            let mut tx = self.pool.begin().await?;
            require_document(&mut tx, document).await?;
            let snapshot: Option<(Vec<u8>, i64)> = sqlx::query_as(
                "SELECT state, up_to_seq FROM document_snapshots WHERE document_id = ?",
            )
            .bind(sql_id(document.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let snapshot_seq = snapshot.as_ref().map_or(0, |(_, up_to)| *up_to);
            let updates: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, bytes FROM document_updates WHERE document_id = ? AND seq > ? ORDER BY seq",
            )
            .bind(sql_id(document.get()))
            .bind(snapshot_seq)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(StoredDocument {
                snapshot: snapshot.map(|(state, _)| state),
                snapshot_seq: seq(snapshot_seq),
                updates: updates
                    .into_iter()
                    .map(|(s, bytes)| (seq(s), bytes))
                    .collect(),
            })
        })
        .await
    }

    async fn compact(
        &self,
        document: DocumentId,
        snapshot: &[u8],
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        timed(BACKEND, "compact_document", async {
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            let head: Option<(i64,)> = sqlx::query_as("SELECT head_seq FROM documents WHERE id = ?")
                .bind(sql_id(document.get()))
                .fetch_optional(&mut *tx)
                .await?;
            let (head,) =
                head.ok_or_else(|| StorageError::NotFound(format!("no document {document}")))?;
            if up_to_seq > seq(head) {
                return Err(StorageError::Invalid(format!(
                    "document {document} has no update {up_to_seq} (head {head})"
                )));
            }
            let covered: Option<(i64,)> =
                sqlx::query_as("SELECT up_to_seq FROM document_snapshots WHERE document_id = ?")
                    .bind(sql_id(document.get()))
                    .fetch_optional(&mut *tx)
                    .await?;
            if covered.is_some_and(|(covered,)| seq(covered) >= up_to_seq) {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO document_snapshots (document_id, state, up_to_seq, created_at) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (document_id) DO UPDATE SET state = excluded.state, \
                 up_to_seq = excluded.up_to_seq, created_at = excluded.created_at",
            )
            .bind(sql_id(document.get()))
            .bind(snapshot)
            .bind(sql_seq(up_to_seq))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM document_updates WHERE document_id = ? AND seq <= ?")
                .bind(sql_id(document.get()))
                .bind(sql_seq(up_to_seq))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn create_version(
        &self,
        document: DocumentId,
        name: &str,
        created_by: UserId,
        state: &[u8],
        covers_seq: u64,
        now_ms: i64,
    ) -> Result<VersionRecord, StorageError> {
        timed(BACKEND, "create_version", async {
            check_version_name(name)?;
            let _writer = self.write_lock.lock().await;
            let mut tx = self.write_tx().await?;
            // The number comes from the document row, like update
            // sequences: a refused version rolls it back, and it is never
            // reused.
            let next: Option<(i64, i64)> = sqlx::query_as(
                "UPDATE documents SET head_version = head_version + 1 WHERE id = ? \
                 RETURNING head_version, head_seq",
            )
            .bind(sql_id(document.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let (version, head) =
                next.ok_or_else(|| StorageError::NotFound(format!("no document {document}")))?;
            if covers_seq > seq(head) {
                return Err(StorageError::Invalid(format!(
                    "document {document} has no update {covers_seq} (head {head})"
                )));
            }
            let row: VersionRow = sqlx::query_as(&format!(
                "INSERT INTO document_versions \
                 (document_id, version, name, created_by, created_at, covers_seq, state) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING {VERSION_COLUMNS}"
            ))
            .bind(sql_id(document.get()))
            .bind(version)
            .bind(name)
            .bind(sql_id(created_by.get()))
            .bind(now_ms)
            .bind(sql_seq(covers_seq))
            .bind(state)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(version_record(row))
        })
        .await
    }

    async fn versions(&self, document: DocumentId) -> Result<Vec<VersionRecord>, StorageError> {
        timed(BACKEND, "document_versions", async {
            let mut tx = self.pool.begin().await?;
            require_document(&mut tx, document).await?;
            let rows: Vec<VersionRow> = sqlx::query_as(&format!(
                "SELECT {VERSION_COLUMNS} FROM document_versions WHERE document_id = ? \
                 ORDER BY version DESC"
            ))
            .bind(sql_id(document.get()))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(version_record).collect())
        })
        .await
    }

    async fn version_state(
        &self,
        document: DocumentId,
        version: u64,
    ) -> Result<Option<(VersionRecord, Vec<u8>)>, StorageError> {
        timed(BACKEND, "document_version_state", async {
            let mut tx = self.pool.begin().await?;
            require_document(&mut tx, document).await?;
            let row: Option<(i64, i64, String, i64, i64, i64, i64, Vec<u8>)> =
                sqlx::query_as(&format!(
                    "SELECT {VERSION_COLUMNS}, state FROM document_versions \
                     WHERE document_id = ? AND version = ?"
                ))
                .bind(sql_id(document.get()))
                .bind(sql_seq(version))
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row.map(|(d, v, name, by, at, covers, size, state)| {
                (version_record((d, v, name, by, at, covers, size)), state)
            }))
        })
        .await
    }
}
