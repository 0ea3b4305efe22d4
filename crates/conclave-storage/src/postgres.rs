//! The PostgreSQL backend, for installations where several server processes
//! ("nodes") share one database.
//!
//! Nothing is serialized inside the process: every write is a plain pooled
//! transaction, and every guarantee the SQLite backend gets from its single
//! writer comes from the database instead, so it holds across nodes:
//!
//! - A channel's next pts (a user's next inbox pts, a document's next
//!   sequence) is taken with `UPDATE ... SET pts = pts + 1 ... RETURNING`,
//!   as late in the transaction as possible. The row lock it takes is held
//!   until commit, so a channel's events commit one at a time, in pts
//!   order, with no gaps: a transaction that fails rolls its increment back.
//! - Uniqueness (usernames, retried sends, pending requests, direct
//!   channels) is enforced by unique indexes, with `ON CONFLICT` where the
//!   existing row is the answer.
//! - Decisions that read before they write (device caps, group changes
//!   checked against the expected memberships, compaction) lock the row
//!   they depend on first (`SELECT ... FOR NO KEY UPDATE`).
//! - Locks are taken in one order (group, then member and message rows,
//!   then the channel's head), and a transaction that still loses a
//!   deadlock or a serialization check is retried from the start.
//!
//! Each node sends the events it committed, after the commit, to its own
//! commit stream. Two nodes (or two connections of one node) may hand a
//! channel's events to their streams slightly out of pts order; every
//! committed event is still sent exactly once, by the node that wrote it.

mod accounts;
mod documents;
mod files;
mod groups;
mod inbox;
mod messaging;
mod social;

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

use crate::metrics::timed;
use crate::{AppliedMigration, Committed, MetaStore, Storage, StorageError};

const BACKEND: &str = "postgres";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Committed events buffered for the fan-out consumer. When it falls this
/// far behind, writers wait (backpressure) rather than drop events.
const COMMIT_STREAM_CAPACITY: usize = 4096;

/// How often a transaction that lost a deadlock or a serialization check
/// is tried in all.
const ATTEMPTS: u32 = 8;

/// Tuning for the PostgreSQL backend (from the `[database]` configuration).
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connections this process keeps at most. Every node has its own pool,
    /// so the server's `max_connections` must cover the sum.
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout_ms: 5_000,
        }
    }
}

pub struct PostgresStorage {
    pool: PgPool,
    /// Committed channel events (see `MessageStore::commits`).
    commit_tx: mpsc::Sender<Committed>,
    commit_rx: Mutex<Option<mpsc::Receiver<Committed>>>,
    /// Whether someone took the commit stream; until then nothing is sent,
    /// so tools that only migrate or read never fill it up.
    commit_consumer: AtomicBool,
}

/// A 64-bit id as the database stores it (`BIGINT`). Ids come from identity
/// columns, so they fit in i64; a larger one was never issued and matches
/// nothing.
pub(super) fn sql_id(raw: u64) -> i64 {
    i64::try_from(raw).unwrap_or(-1)
}

/// A stored id or position, which is never negative.
pub(super) fn unsigned(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

/// A position (pts, sequence) as the database stores it.
pub(super) fn sql_pos(pos: u64) -> i64 {
    i64::try_from(pos).unwrap_or(i64::MAX)
}

/// Whether a statement failed on a UNIQUE constraint.
pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Why one attempt at a transaction failed: a database error (which may be
/// worth retrying) or a decision about the request.
#[derive(Debug)]
pub(super) enum Fail {
    Db(sqlx::Error),
    Refused(StorageError),
}

impl Fail {
    /// A deadlock victim or a serialization failure: the same transaction,
    /// run again, may well succeed.
    fn is_retryable(&self) -> bool {
        match self {
            Fail::Db(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }
}

impl From<sqlx::Error> for Fail {
    fn from(err: sqlx::Error) -> Self {
        Fail::Db(err)
    }
}

impl From<StorageError> for Fail {
    fn from(err: StorageError) -> Self {
        Fail::Refused(err)
    }
}

impl From<Fail> for StorageError {
    fn from(fail: Fail) -> Self {
        match fail {
            Fail::Db(err) => err.into(),
            Fail::Refused(err) => err,
        }
    }
}

/// Runs `attempt` (one whole transaction) again while it fails on a
/// deadlock or a serialization check, with a short, growing pause.
pub(super) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(fail) if fail.is_retryable() && tries < ATTEMPTS => {
                tracing::debug!(error = ?fail, tries, "transaction lost a lock race; retrying");
                // Spread the retries of the transactions that collided.
                let jitter = u64::from(std::process::id() % 7) + u64::from(tries) * 3;
                tokio::time::sleep(Duration::from_millis(u64::from(tries) * 5 + jitter)).await;
                tries += 1;
            }
            Err(fail) => return Err(fail.into()),
        }
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (`postgres://...`; the database
    /// must exist) and runs pending migrations. Nodes starting at once
    /// migrate one at a time (the migrator holds an advisory lock).
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self, StorageError> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|err| StorageError::Unavailable(format!("bad postgres url: {err}")))?
            .application_name("conclave");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_millis(options.acquire_timeout_ms))
            .connect_with(connect)
            .await?;
        timed(BACKEND, "migrate", MIGRATOR.run(&pool)).await?;
        let (commit_tx, commit_rx) = mpsc::channel(COMMIT_STREAM_CAPACITY);
        Ok(Self {
            pool,
            commit_tx,
            commit_rx: Mutex::new(Some(commit_rx)),
            commit_consumer: AtomicBool::new(false),
        })
    }

    fn take_commits(&self) -> Option<mpsc::Receiver<Committed>> {
        let taken = self
            .commit_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if taken.is_some() {
            self.commit_consumer.store(true, Ordering::SeqCst);
        }
        taken
    }

    /// Hands a committed event to the consumer, if there is one. Called
    /// once per event, after its transaction committed.
    async fn publish(&self, committed: Committed) {
        if self.commit_consumer.load(Ordering::SeqCst) {
            // Fails only if the consumer is gone (shutdown); nothing to do.
            let _ = self.commit_tx.send(committed).await;
        }
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
impl Storage for PostgresStorage {
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
            // The database keeps its own pages consistent; what can go wrong
            // is ours: a log entry past the head that numbers it. Each check
            // is an index probe per row of the head's table.
            const CHECKS: &[(&str, &str)] = &[
                (
                    "channel events past the channel's pts",
                    "SELECT c.id FROM channels c WHERE EXISTS \
                     (SELECT 1 FROM channel_events e WHERE e.channel_id = c.id AND e.pts > c.pts) \
                     ORDER BY c.id LIMIT 5",
                ),
                (
                    "inbox events past the user's inbox pts",
                    "SELECT u.id FROM users u WHERE EXISTS \
                     (SELECT 1 FROM inbox_events e WHERE e.user_id = u.id AND e.pts > u.inbox_pts) \
                     ORDER BY u.id LIMIT 5",
                ),
                (
                    "document updates past the document's head",
                    "SELECT d.id FROM documents d WHERE EXISTS \
                     (SELECT 1 FROM document_updates u WHERE u.document_id = d.id AND u.seq > d.head_seq) \
                     ORDER BY d.id LIMIT 5",
                ),
            ];
            let mut problems = Vec::new();
            for (what, query) in CHECKS {
                let ids: Vec<(i64,)> = sqlx::query_as(query).fetch_all(&self.pool).await?;
                if !ids.is_empty() {
                    let ids: Vec<String> = ids.iter().map(|(id,)| id.to_string()).collect();
                    problems.push(format!("{what} (ids {})", ids.join(", ")));
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(StorageError::Corrupt(problems.join("; ")))
            }
        })
        .await
    }

    async fn close(&self) {
        // Every acknowledged write is committed already; closing waits for
        // the connections in use to come back.
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
}

#[async_trait]
impl MetaStore for PostgresStorage {
    async fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        timed(BACKEND, "meta_get", async {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT value FROM conclave_meta WHERE key = $1")
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
            // One statement: a concurrent insert of the same key (from any
            // node) makes this one wait for it and then return its value.
            let (stored,): (String,) = sqlx::query_as(
                "INSERT INTO conclave_meta (key, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key \
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
