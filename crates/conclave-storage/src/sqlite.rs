//! The embedded SQLite backend.

mod accounts;
mod checkpointer;
mod documents;
mod files;
mod group_commit;
mod groups;
mod inbox;
mod inline_reads;
mod messaging;
mod search_backlog;
mod social;
mod write_thread;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::metrics::timed;
use crate::{AppliedMigration, MetaStore, Storage, StorageError};

const BACKEND: &str = "sqlite";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Tuning for the SQLite backend (from the `[database]` configuration).
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub max_connections: u32,
    pub busy_timeout_ms: u64,
    pub acquire_timeout_ms: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            busy_timeout_ms: 5_000,
            acquire_timeout_ms: 5_000,
        }
    }
}

pub struct SqliteStorage {
    pool: SqlitePool,
    /// SQLite admits one writer at a time. Serializing our own write
    /// transactions here makes them queue in order instead of failing with
    /// SQLITE_BUSY when a deferred transaction upgrades to a write lock.
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Committed channel events, in commit order (see `MessageStore::commits`).
    commit_tx: tokio::sync::mpsc::Sender<crate::Committed>,
    commit_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::Committed>>>,
    /// Whether someone took the commit stream; until then nothing is sent,
    /// so tools that only migrate or read never fill it up.
    commit_consumer: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Message sends and document updates go to the group-commit writer
    /// through this queue; `None` once closed.
    writes: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<group_commit::WriteRequest>>>,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The hot path's small reads, on the calling thread.
    reads: inline_reads::InlineReads,
    /// Sent messages' search text not yet indexed.
    search: std::sync::Arc<search_backlog::SearchBacklog>,
}

/// A 64-bit id as SQLite stores it. Ids come from `INTEGER PRIMARY KEY`, so
/// they fit in i64; a larger one was never issued and matches nothing.
pub(super) fn sql_id(raw: u64) -> i64 {
    i64::try_from(raw).unwrap_or(-1)
}

/// A row's columns read by name, the same way from sqlx's rows and from
/// rusqlite's (the write thread's and the inline reads'), so one row mapper
/// serves both.
pub(super) trait Columns {
    type Error;
    fn int(&self, name: &str) -> Result<i64, Self::Error>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, Self::Error>;
    fn text(&self, name: &str) -> Result<String, Self::Error>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, Self::Error>;
}

impl Columns for sqlx::sqlite::SqliteRow {
    type Error = sqlx::Error;
    fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
    fn text(&self, name: &str) -> Result<String, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::Row::try_get(self, name)
    }
}

/// A rusqlite row read by column name: a plain row, or one read through a
/// [`ColumnIndex`].
pub(super) trait NamedColumns {
    fn named<T: rusqlite::types::FromSql>(&self, name: &str) -> Result<T, rusqlite::Error>;
}

impl NamedColumns for rusqlite::Row<'_> {
    fn named<T: rusqlite::types::FromSql>(&self, name: &str) -> Result<T, rusqlite::Error> {
        self.get(name)
    }
}

impl<R: NamedColumns> Columns for R {
    type Error = rusqlite::Error;
    fn int(&self, name: &str) -> Result<i64, rusqlite::Error> {
        self.named(name)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, rusqlite::Error> {
        self.named(name)
    }
    fn text(&self, name: &str) -> Result<String, rusqlite::Error> {
        self.named(name)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, rusqlite::Error> {
        self.named(name)
    }
}

/// Where each result column of a statement is, by name. A rusqlite row
/// finds a column by comparing the name with every column's name in turn;
/// on a wide join read for every message that search cost more than the
/// reads. Built once per statement text and kept (the columns of a
/// statement do not change while the process runs).
pub(super) struct ColumnIndex(std::collections::HashMap<String, usize>);

impl ColumnIndex {
    pub fn of(statement: &rusqlite::Statement<'_>) -> Self {
        // Reversed, so the first of two columns with one name wins, as in
        // rusqlite's own lookup.
        let names = statement.column_names().into_iter().enumerate().rev();
        Self(names.map(|(at, name)| (name.to_owned(), at)).collect())
    }

    /// `row`, read through this index.
    pub fn row<'r, 's>(&'r self, row: &'r rusqlite::Row<'s>) -> IndexedRow<'r, 's> {
        IndexedRow { index: self, row }
    }
}

/// A rusqlite row whose columns are found through a [`ColumnIndex`].
pub(super) struct IndexedRow<'r, 's> {
    index: &'r ColumnIndex,
    row: &'r rusqlite::Row<'s>,
}

impl NamedColumns for IndexedRow<'_, '_> {
    fn named<T: rusqlite::types::FromSql>(&self, name: &str) -> Result<T, rusqlite::Error> {
        match self.index.0.get(name) {
            Some(&at) => self.row.get(at),
            // Not in the index under this exact name: rusqlite's own
            // (case-insensitive) search decides.
            None => self.row.get(name),
        }
    }
}

/// Whether a statement failed on a UNIQUE constraint.
pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Hands a committed event to the commit stream's consumer, if there is one.
/// Called with the writer lock held, so events arrive in commit order.
async fn publish(
    commit_tx: &tokio::sync::mpsc::Sender<crate::Committed>,
    consumer: &std::sync::atomic::AtomicBool,
    committed: crate::Committed,
) {
    if consumer.load(std::sync::atomic::Ordering::SeqCst) {
        // Fails only if the consumer is gone (shutdown); nothing to do.
        let _ = commit_tx.send(committed).await;
    }
}

/// Committed events buffered for the fan-out consumer. When it falls this
/// far behind, writers wait (backpressure) rather than drop events.
const COMMIT_STREAM_CAPACITY: usize = 4096;

impl SqliteStorage {
    /// Opens (creating if needed) the database at `url` (`sqlite://PATH`),
    /// switches it to WAL and runs pending migrations.
    pub async fn open(url: &str, options: SqliteOptions) -> Result<Self, StorageError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|err| StorageError::Unavailable(format!("bad sqlite url: {err}")))?
            .create_if_missing(true)
            // WAL lets readers proceed while one writer commits.
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives power loss, not just a
            // process crash. Group commit amortizes the extra fsync.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Checkpoints run on a thread of their own, not inside commits.
            .pragma("wal_autocheckpoint", "0")
            .busy_timeout(Duration::from_millis(options.busy_timeout_ms));
        let path = connect.get_filename().to_owned();
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
            .connect_with(connect)
            .await?;
        timed(BACKEND, "migrate", MIGRATOR.run(&pool)).await?;
        let (waiting,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM search_backlog")
            .fetch_one(&pool)
            .await?;
        let search = std::sync::Arc::new(search_backlog::SearchBacklog::new(
            u64::try_from(waiting).unwrap_or(0),
        ));
        let (commit_tx, commit_rx) = tokio::sync::mpsc::channel(COMMIT_STREAM_CAPACITY);
        let write_lock = std::sync::Arc::new(tokio::sync::Mutex::new(()));
        let commit_consumer = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread =
            write_thread::WriteThread::open(&path, Duration::from_millis(options.busy_timeout_ms))?;
        let checkpoints = checkpointer::Checkpoints::start(&path)?;
        let reads = inline_reads::InlineReads::new(&path);
        let (writes, requests) = tokio::sync::mpsc::channel(group_commit::QUEUE_CAPACITY);
        let writer = tokio::spawn(group_commit::run(
            group_commit::Writer {
                thread,
                checkpoints,
                write_lock: write_lock.clone(),
                commit_tx: commit_tx.clone(),
                commit_consumer: commit_consumer.clone(),
                search: search.clone(),
            },
            requests,
        ));
        Ok(Self {
            pool,
            write_lock,
            commit_tx,
            commit_rx: std::sync::Mutex::new(Some(commit_rx)),
            commit_consumer,
            writes: std::sync::Mutex::new(Some(writes)),
            writer: std::sync::Mutex::new(Some(writer)),
            reads,
            search,
        })
    }

    /// A write transaction that takes SQLite's write lock at once (`BEGIN
    /// IMMEDIATE`), for use under [`Self::write_lock`]. A deferred one that
    /// reads first would have to upgrade later, and SQLite refuses an
    /// upgrade at once (no busy wait) while another connection still holds
    /// the lock, as a dropped transaction's connection does until its
    /// rollback has run.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Moves the search backlog into the index, if texts may be waiting
    /// (see [`search_backlog`]): a search runs this first.
    async fn index_search_backlog(&self) -> Result<(), StorageError> {
        if !self.search.any() {
            return Ok(());
        }
        timed(BACKEND, "index_search_backlog", async {
            let _writer = self.write_lock.lock().await;
            if !self.search.any() {
                return Ok(());
            }
            let mut tx = self.write_tx().await?;
            for sql in search_backlog::INDEX_SQL {
                sqlx::query(sql).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            self.search.indexed();
            Ok(())
        })
        .await
    }

    /// Hands `request` to the group-commit writer.
    async fn queue_write(&self, request: group_commit::WriteRequest) -> Result<(), StorageError> {
        let queue = self
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let queue = queue.ok_or(StorageError::Closed)?;
        queue.send(request).await.map_err(|_| StorageError::Closed)
    }

    fn take_commits(&self) -> Option<tokio::sync::mpsc::Receiver<crate::Committed>> {
        let taken = self
            .commit_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if taken.is_some() {
            self.commit_consumer
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        taken
    }

    /// Hands a committed event to the consumer. Called with the writer lock
    /// held, so events arrive in commit order.
    async fn publish(&self, committed: crate::Committed) {
        publish(&self.commit_tx, &self.commit_consumer, committed).await;
    }

    /// Migrations this build knows, for `conclave migrate` to report.
    pub fn known_migrations() -> Vec<AppliedMigration> {
        MIGRATOR
            .iter()
            .map(|m| AppliedMigration {
                version: m.version,
                description: m.description.to_string(),
            })
            .collect()
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn ping(&self) -> Result<(), StorageError> {
        timed(BACKEND, "ping", async {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
        .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StorageError> {
        timed(BACKEND, "applied_migrations", async {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT version, description FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(version, description)| AppliedMigration {
                    version,
                    description,
                })
                .collect())
        })
        .await
    }

    async fn check_integrity(&self) -> Result<(), StorageError> {
        timed(BACKEND, "check_integrity", async {
            let rows: Vec<(String,)> = sqlx::query_as("PRAGMA integrity_check")
                .fetch_all(&self.pool)
                .await?;
            match rows.as_slice() {
                [(ok,)] if ok == "ok" => Ok(()),
                problems => Err(StorageError::Corrupt(
                    problems
                        .iter()
                        .map(|(p,)| p.as_str())
                        .collect::<Vec<_>>()
                        .join("; "),
                )),
            }
        })
        .await
    }

    async fn close(&self) {
        // Stop taking writes, and let the writer finish the ones it has.
        drop(self.writes.lock().unwrap_or_else(|e| e.into_inner()).take());
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        if self.pool.is_closed() {
            return;
        }
        // Fold the WAL back into the database file so the data directory is
        // a single self-contained file after a clean shutdown.
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %err, "WAL checkpoint at close failed; SQLite will replay the WAL on next open");
        }
        self.pool.close().await;
    }

    fn meta(&self) -> &dyn MetaStore {
        self
    }

    fn accounts(&self) -> &dyn crate::AccountStore {
        self
    }

    fn messages(&self) -> &dyn crate::MessageStore {
        self
    }

    fn inbox(&self) -> &dyn crate::InboxStore {
        self
    }

    fn documents(&self) -> &dyn crate::DocumentStore {
        self
    }

    fn social(&self) -> &dyn crate::SocialStore {
        self
    }

    fn groups(&self) -> &dyn crate::GroupStore {
        self
    }

    fn files(&self) -> &dyn crate::FileStore {
        self
    }

    async fn write_context(
        &self,
        channel: conclave_core::ChannelId,
        user: conclave_core::UserId,
    ) -> Result<Option<crate::WriteContext>, StorageError> {
        self.write_context_joined(channel, user).await
    }
}

#[async_trait]
impl MetaStore for SqliteStorage {
    async fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        timed(BACKEND, "meta_get", async {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT value FROM conclave_meta WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(|(value,)| value))
        })
        .await
    }

    async fn get_or_insert(
        &self,
        key: &str,
        value: &str,
        now_ms: i64,
    ) -> Result<String, StorageError> {
        timed(BACKEND, "meta_get_or_insert", async {
            let _writer = self.write_lock.lock().await;
            // One statement, so concurrent writers cannot both "win".
            let (stored,): (String,) = sqlx::query_as(
                "INSERT INTO conclave_meta (key, value, created_at) VALUES (?, ?, ?) \
                 ON CONFLICT (key) DO UPDATE SET key = excluded.key \
                 RETURNING value",
            )
            .bind(key)
            .bind(value)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
            Ok(stored)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_indexed_row_reads_the_column_a_name_lookup_would() {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        let mut statement = connection
            .prepare("SELECT 1 AS a, 'two' AS b, NULL AS c, 4 AS a")
            .unwrap();
        let index = ColumnIndex::of(&statement);
        let mut rows = statement.query([]).unwrap();
        let row = rows.next().unwrap().unwrap();
        let indexed = index.row(row);
        assert_eq!(indexed.int("a").unwrap(), 1, "the first of two `a`s");
        assert_eq!(indexed.text("b").unwrap(), "two");
        assert_eq!(indexed.opt_int("c").unwrap(), None);
        assert_eq!(indexed.text("B").unwrap(), "two", "names match in any case");
        assert!(indexed.int("d").is_err());
    }
}
