//! A SQLite write connection on a thread of its own.
//!
//! Every statement sqlx runs on SQLite is a round trip between the async
//! task and the connection's worker thread. For the hot write path (a batch
//! of message sends or document updates, about ten statements each) those
//! round trips, not SQLite, were the cost: the wake-ups and context switches
//! took most of the server's CPU. Here the whole batch runs as one job on a
//! thread that owns a plain connection, with its statements prepared once
//! and cached: one hand-off per batch instead of one per statement.
//!
//! The connection writes the same database file as the pool (WAL, so the
//! pool's readers see each commit at once). Callers hold the storage's
//! writer lock while a job runs, so it never competes with the pool's
//! writers.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::StorageError;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Statements kept prepared: the write path uses about a dozen.
const STATEMENT_CACHE: usize = 32;

/// Jobs waiting for the thread. Its one caller (the group-commit writer)
/// waits for each job before it sends the next, so one slot is all it uses.
const JOBS_WAITING_MAX: usize = 4;

pub(super) struct WriteThread {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl WriteThread {
    /// Opens the connection to the (already migrated) database at `path`
    /// and starts its thread. The thread ends once the last handle is gone.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Self, StorageError> {
        let mut connection = Connection::open(path).map_err(database)?;
        // The same durability and rules as the pool's connections: an
        // acknowledged write survives power loss; foreign keys hold;
        // checkpoints are the checkpointer's.
        connection
            .execute_batch(&format!(
                "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; {}",
                super::checkpointer::DISABLE_AUTOCHECKPOINT
            ))
            .map_err(database)?;
        connection.busy_timeout(busy_timeout).map_err(database)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(JOBS_WAITING_MAX);
        std::thread::Builder::new()
            .name("conclave-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A job that panics loses its own answer (its
                    // transaction rolls back as it unwinds), not the thread.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut connection));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("a write job panicked; its transaction was rolled back");
                    }
                }
            })
            .map_err(|err| StorageError::Unavailable(format!("cannot start the writer: {err}")))?;
        Ok(Self { jobs })
    }

    /// Runs `job` on the connection and returns what it returns.
    pub async fn run<R: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Result<R, StorageError> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(job(connection));
        });
        // Never blocks the async caller: a full queue is refused instead.
        self.jobs.try_send(job).map_err(|err| match err {
            std::sync::mpsc::TrySendError::Full(_) => {
                StorageError::Unavailable("the SQLite write thread is busy".into())
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => StorageError::Closed,
        })?;
        // Only a job that panicked drops its reply unanswered.
        answer
            .await
            .map_err(|_| StorageError::Database("the write job did not finish".into()))
    }
}

/// A rusqlite error as a storage error.
pub(super) fn database(err: rusqlite::Error) -> StorageError {
    match err.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StorageError::Unavailable(err.to_string())
        }
        _ => StorageError::Database(err.to_string()),
    }
}
