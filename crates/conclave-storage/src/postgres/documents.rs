//! [`DocumentStore`] on PostgreSQL.

use async_trait::async_trait;
use conclave_core::{ChannelId, DocumentId, UserId};

use super::{
    BACKEND, Fail, PostgresStorage, is_unique_violation, retrying, sql_id, sql_pos, unsigned,
};
use crate::documents::check_version_name;
use crate::metrics::timed;
use crate::{DocumentRecord, DocumentStore, StorageError, StoredDocument, VersionRecord};

const DOCUMENT_COLUMNS: &str = "id, name, owner_id, channel_id, created_at";

type DocumentRow = (i64, String, i64, Option<i64>, i64);

/// A version without its state; `octet_length` reads the size from the
/// value's header, without fetching a TOASTed state.
const VERSION_COLUMNS: &str = "document_id, version, name, created_by, created_at, covers_seq, \
     octet_length(state)::BIGINT";

type VersionRow = (i64, i64, String, i64, i64, i64, i64);

fn version_record(
    (document_id, version, name, created_by, created_at, covers_seq, size): VersionRow,
) -> VersionRecord {
    VersionRecord {
        document_id: DocumentId::new(unsigned(document_id)),
        version: unsigned(version),
        name,
        created_by: UserId::new(unsigned(created_by)),
        created_at_ms: created_at,
        covers_seq: unsigned(covers_seq),
        size_bytes: unsigned(size),
    }
}

fn record((id, name, owner_id, channel_id, created_at): DocumentRow) -> DocumentRecord {
    DocumentRecord {
        id: DocumentId::new(unsigned(id)),
        name,
        owner_id: UserId::new(unsigned(owner_id)),
        channel_id: channel_id.map(|id| ChannelId::new(unsigned(id))),
        created_at_ms: created_at,
    }
}

impl PostgresStorage {
    async fn compact_once(
        &self,
        document: DocumentId,
        snapshot: &[u8],
        up_to_seq: u64,
        now_ms: i64,
    ) -> Result<bool, Fail> {
        let mut tx = self.pool.begin().await?;
        // Compactions and appends of the document queue on its row, so an
        // older snapshot can never replace a newer one.
        let head: Option<(i64, Option<i64>)> = sqlx::query_as(
            "SELECT d.head_seq, s.up_to_seq FROM documents d \
             LEFT JOIN document_snapshots s ON s.document_id = d.id \
             WHERE d.id = $1 FOR NO KEY UPDATE OF d",
        )
        .bind(sql_id(document.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((head, covered)) = head else {
            return Err(StorageError::NotFound(format!("no document {document}")).into());
        };
        if up_to_seq > unsigned(head) {
            return Err(StorageError::Invalid(format!(
                "document {document} has no update {up_to_seq} (head {head})"
            ))
            .into());
        }
        if covered.is_some_and(|covered| unsigned(covered) >= up_to_seq) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO document_snapshots (document_id, state, up_to_seq, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (document_id) DO UPDATE SET state = EXCLUDED.state, \
             up_to_seq = EXCLUDED.up_to_seq, created_at = EXCLUDED.created_at",
        )
        .bind(sql_id(document.get()))
        .bind(snapshot)
        .bind(sql_pos(up_to_seq))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM document_updates WHERE document_id = $1 AND seq <= $2")
            .bind(sql_id(document.get()))
            .bind(sql_pos(up_to_seq))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn create_version_once(
        &self,
        document: DocumentId,
        name: &str,
        created_by: UserId,
        state: &[u8],
        covers_seq: u64,
        now_ms: i64,
    ) -> Result<VersionRecord, Fail> {
        let mut tx = self.pool.begin().await?;
        // The number comes from the document row, whose lock orders the
        // versions of every node; a refused version rolls it back.
        let next: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE documents SET head_version = head_version + 1 WHERE id = $1 \
             RETURNING head_version, head_seq",
        )
        .bind(sql_id(document.get()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((version, head)) = next else {
            return Err(StorageError::NotFound(format!("no document {document}")).into());
        };
        if covers_seq > unsigned(head) {
            return Err(StorageError::Invalid(format!(
                "document {document} has no update {covers_seq} (head {head})"
            ))
            .into());
        }
        let row: VersionRow = sqlx::query_as(&format!(
            "INSERT INTO document_versions \
             (document_id, version, name, created_by, created_at, covers_seq, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {VERSION_COLUMNS}"
        ))
        .bind(sql_id(document.get()))
        .bind(version)
        .bind(name)
        .bind(sql_id(created_by.get()))
        .bind(now_ms)
        .bind(sql_pos(covers_seq))
        .bind(state)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version_record(row))
    }
}

#[async_trait]
impl DocumentStore for PostgresStorage {
    async fn create_document(
        &self,
        name: &str,
        owner: UserId,
        channel: Option<ChannelId>,
        now_ms: i64,
    ) -> Result<DocumentRecord, StorageError> {
        timed(BACKEND, "create_document", async {
            let row: DocumentRow = sqlx::query_as(&format!(
                "INSERT INTO documents (name, owner_id, channel_id, created_at) VALUES ($1, $2, $3, $4) \
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
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE name = $1"
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
                "SELECT {DOCUMENT_COLUMNS} FROM documents WHERE id = $1"
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
            // One statement (its own transaction): the sequence comes from
            // the document's row, whose lock orders appends from every
            // node, survives compaction and never repeats. Durable when the
            // statement returns.
            let row: Option<(i64,)> = sqlx::query_as(
                "WITH head AS (UPDATE documents SET head_seq = head_seq + 1 WHERE id = $1 RETURNING head_seq) \
                 INSERT INTO document_updates (document_id, seq, bytes, created_at) \
                 SELECT $1, head_seq, $2, $3 FROM head RETURNING seq",
            )
            .bind(sql_id(document.get()))
            .bind(update)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
            let (seq,) =
                row.ok_or_else(|| StorageError::NotFound(format!("no document {document}")))?;
            Ok(unsigned(seq))
        })
        .await
    }

    async fn load(&self, document: DocumentId) -> Result<StoredDocument, StorageError> {
        timed(BACKEND, "load_document", async {
            // One snapshot for every read: a compaction committing in
            // between cannot make the snapshot and the updates disagree.
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await?;
            let found: Option<(Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(
                "SELECT s.state, s.up_to_seq FROM documents d \
                 LEFT JOIN document_snapshots s ON s.document_id = d.id WHERE d.id = $1",
            )
            .bind(sql_id(document.get()))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((snapshot, snapshot_seq)) = found else {
                return Err(StorageError::NotFound(format!("no document {document}")));
            };
            let snapshot_seq = snapshot_seq.unwrap_or(0);
            let updates: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT seq, bytes FROM document_updates WHERE document_id = $1 AND seq > $2 ORDER BY seq",
            )
            .bind(sql_id(document.get()))
            .bind(snapshot_seq)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(StoredDocument {
                snapshot,
                snapshot_seq: unsigned(snapshot_seq),
                updates: updates
                    .into_iter()
                    .map(|(seq, bytes)| (unsigned(seq), bytes))
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
        timed(
            BACKEND,
            "compact_document",
            retrying(|| self.compact_once(document, snapshot, up_to_seq, now_ms)),
        )
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
            retrying(|| {
                self.create_version_once(document, name, created_by, state, covers_seq, now_ms)
            })
            .await
        })
        .await
    }

    async fn versions(&self, document: DocumentId) -> Result<Vec<VersionRecord>, StorageError> {
        timed(BACKEND, "document_versions", async {
            // One snapshot: the document's existence and its versions agree.
            let mut tx = self
                .pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await?;
            let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM documents WHERE id = $1")
                .bind(sql_id(document.get()))
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StorageError::NotFound(format!("no document {document}")));
            }
            let rows: Vec<VersionRow> = sqlx::query_as(&format!(
                "SELECT {VERSION_COLUMNS} FROM document_versions WHERE document_id = $1 \
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
            // The document's row joined with the version, if any: one
            // statement tells an unknown document from an unknown version.
            let found: Option<(
                Option<i64>,
                Option<i64>,
                Option<String>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<Vec<u8>>,
            )> = sqlx::query_as(
                "SELECT v.document_id, v.version, v.name, v.created_by, v.created_at, \
                 v.covers_seq, octet_length(v.state)::BIGINT, v.state FROM documents d \
                 LEFT JOIN document_versions v ON v.document_id = d.id AND v.version = $2 \
                 WHERE d.id = $1",
            )
            .bind(sql_id(document.get()))
            .bind(sql_pos(version))
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = found else {
                return Err(StorageError::NotFound(format!("no document {document}")));
            };
            Ok(match row {
                (
                    Some(d),
                    Some(v),
                    Some(name),
                    Some(by),
                    Some(at),
                    Some(covers),
                    Some(size),
                    Some(state),
                ) => Some((version_record((d, v, name, by, at, covers, size)), state)),
                _ => None,
            })
        })
        .await
    }
}
