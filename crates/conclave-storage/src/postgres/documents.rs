//! [`DocumentStore`] on PostgreSQL.

use async_trait::async_trait;
use conclave_core::{ChannelId, DocumentId, UserId};

use super::{
    BACKEND, Fail, PostgresStorage, is_unique_violation, retrying, sql_id, sql_pos, unsigned,
};
use crate::metrics::timed;
use crate::{DocumentRecord, DocumentStore, StorageError, StoredDocument};

const DOCUMENT_COLUMNS: &str = "id, name, owner_id, channel_id, created_at";

type DocumentRow = (i64, String, i64, Option<i64>, i64);

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
}
