//! Short reads on the hot path, run on the calling thread.
//!
//! A read through sqlx's pool is a round trip to the connection's worker
//! thread: two thread wake-ups, which for the one small read that checks
//! every message send cost more than the read itself. The reads here are
//! single indexed lookups on pages SQLite almost always has cached (tens of
//! microseconds), so they run where they are asked for, on plain read-only
//! connections kept in a small stack. WAL readers never wait for the
//! writer; a short busy timeout bounds the rare wait (recovery, a truncating
//! checkpoint at shutdown), after which the read fails as unavailable
//! instead of holding the async thread.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::write_thread::database;
use crate::StorageError;

/// Connections kept for reuse; more are opened when more threads read at
/// once, and closed after use beyond this.
const IDLE_MAX: usize = 4;
/// Statements kept prepared per connection.
const STATEMENT_CACHE: usize = 8;
/// The longest a read waits for a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

pub(super) struct InlineReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl InlineReads {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> Result<Connection, StorageError> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(database)?;
        connection.busy_timeout(BUSY_TIMEOUT).map_err(database)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(connection)
    }

    /// Runs `read` on a connection of the stack (or a new one).
    pub fn run<R>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StorageError> {
        let taken = self.idle().pop();
        let connection = match taken {
            Some(connection) => connection,
            None => self.open()?,
        };
        let result = read(&connection);
        let mut idle = self.idle();
        if idle.len() < IDLE_MAX {
            idle.push(connection);
        }
        result.map_err(database)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(reads: &InlineReads) -> i64 {
        reads
            .run(|connection| {
                connection
                    .prepare_cached("SELECT COUNT(*) FROM t")?
                    .query_row([], |row| row.get(0))
            })
            .unwrap()
    }

    #[test]
    fn a_kept_connection_sees_every_commit_and_never_waits_for_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reads.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
            .unwrap();
        let reads = InlineReads::new(&path);
        assert_eq!(count(&reads), 0);
        assert_eq!(reads.idle().len(), 1, "kept for the next read");

        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert_eq!(count(&reads), 1, "the kept connection reads the commit");

        // A writer in the middle of a transaction: the read goes on at once
        // and sees only what was committed.
        writer
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2);")
            .unwrap();
        assert_eq!(count(&reads), 1);
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&reads), 2);

        let refused = reads.run(|connection| connection.execute("INSERT INTO t VALUES (3)", []));
        assert!(refused.is_err(), "read-only: {refused:?}");
        assert_eq!(count(&reads), 2);
    }
}
