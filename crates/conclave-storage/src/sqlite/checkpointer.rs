//! WAL checkpoints on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside a commit: every 1,000 pages of
//! WAL, the committing connection copies the WAL's pages into the database
//! file and fsyncs it before its commit returns. On the group-commit writer
//! that stalls the batch being answered and every batch queued behind it.
//! So every connection here turns the automatic checkpoint off
//! ([`DISABLE_AUTOCHECKPOINT`]), and this thread copies pages back with
//! `PASSIVE` checkpoints, which never wait for and never block readers or
//! the writer.
//!
//! A passive checkpoint cannot finish while the writer keeps appending, and
//! SQLite only starts the WAL over from its beginning after a checkpoint
//! that copied everything. So once the WAL grows past [`RESTART_FRAMES`],
//! this thread asks the writer to finish one itself between two batches
//! ([`Checkpoints::restart_wanted`], [`restart_wal`]): with almost every
//! page already copied here, that costs the writer little.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::write_thread::database;
use crate::StorageError;

/// Run on every connection that may write.
pub(super) const DISABLE_AUTOCHECKPOINT: &str = "PRAGMA wal_autocheckpoint = 0;";

/// The least time between two checkpoints while writes keep coming: each
/// one fsyncs the database file, and a page rewritten many times within
/// the interval is copied once.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often to look for writes nobody announced (the pool's writers).
const IDLE_INTERVAL: Duration = Duration::from_secs(1);

/// WAL length (in pages) past which the writer is asked to finish a
/// checkpoint so the WAL starts over: 32 MiB of 4 KiB pages.
const RESTART_FRAMES: i64 = 8192;

/// The handle the writer keeps: it announces commits and is told when to
/// restart the WAL.
pub(super) struct Checkpoints {
    wake: Option<SyncSender<()>>,
    restart: Arc<AtomicBool>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl Checkpoints {
    /// Opens a connection to the (already migrated) database at `path` and
    /// starts the checkpoint thread.
    pub fn start(path: &std::path::Path) -> Result<Self, StorageError> {
        Self::start_with(path, RESTART_FRAMES)
    }

    fn start_with(path: &std::path::Path, restart_frames: i64) -> Result<Self, StorageError> {
        let connection = Connection::open(path).map_err(database)?;
        connection
            .execute_batch(DISABLE_AUTOCHECKPOINT)
            .map_err(database)?;
        let (wake, woken) = mpsc::sync_channel(1);
        let restart = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel();
        let wanted = restart.clone();
        std::thread::Builder::new()
            .name("conclave-sqlite-checkpointer".into())
            .spawn(move || {
                run(&connection, &woken, &wanted, restart_frames);
                drop(connection);
                let _ = stop.send(());
            })
            .map_err(|err| {
                StorageError::Unavailable(format!("cannot start the checkpointer: {err}"))
            })?;
        Ok(Self {
            wake: Some(wake),
            restart,
            stopped: Some(stopped),
        })
    }

    /// Tells the thread that a commit added pages to the WAL.
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            // Full means a wake-up is already pending.
            let _ = wake.try_send(());
        }
    }

    /// Whether the writer should run [`restart_wal`] now; asks once.
    pub fn restart_wanted(&self) -> bool {
        self.restart.swap(false, Ordering::Relaxed)
    }

    /// Stops the thread after its last checkpoint and waits until its
    /// connection is closed.
    pub async fn stop(mut self) {
        drop(self.wake.take());
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }
}

fn run(
    connection: &Connection,
    woken: &mpsc::Receiver<()>,
    restart: &AtomicBool,
    restart_frames: i64,
) {
    loop {
        let woken = woken.recv_timeout(IDLE_INTERVAL);
        let started = Instant::now();
        match checkpoint(connection, "PASSIVE") {
            Ok(wal) if wal.frames >= restart_frames => restart.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "WAL checkpoint failed"),
        }
        if woken == Err(RecvTimeoutError::Disconnected) {
            return;
        }
        std::thread::sleep(MIN_INTERVAL.saturating_sub(started.elapsed()));
    }
}

/// What a checkpoint left: the WAL's length and how much of it is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wal {
    pub frames: i64,
    pub copied: i64,
}

/// Runs one checkpoint in `mode` (`PASSIVE` or `RESTART`).
fn checkpoint(connection: &Connection, mode: &str) -> Result<Wal, StorageError> {
    let started = Instant::now();
    let result = connection
        .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok(Wal {
                frames: row.get(1)?,
                copied: row.get(2)?,
            })
        })
        .map_err(database);
    let op = if mode == "PASSIVE" {
        "checkpoint"
    } else {
        "wal_restart"
    };
    crate::metrics::observe(super::BACKEND, op, result.is_ok(), started);
    result
}

/// Copies what is left of the WAL into the database file, waiting for
/// readers still on older pages, so the next commit starts the WAL over.
/// For the writer, between batches, when [`Checkpoints::restart_wanted`].
pub(super) fn restart_wal(connection: &Connection) -> Result<Wal, StorageError> {
    checkpoint(connection, "RESTART")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_frames(connection: &Connection) -> i64 {
        // A passive checkpoint with nothing to copy reports the WAL's length.
        checkpoint(connection, "PASSIVE").unwrap().frames
    }

    #[tokio::test]
    async fn the_wal_is_copied_back_without_the_writer_and_starts_over_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (x BLOB NOT NULL);",
            )
            .unwrap();
        let checkpoints = Checkpoints::start_with(&path, 2000).unwrap();
        // Past the automatic threshold, which is off: only the thread
        // copies pages back.
        let row = vec![7u8; 3000];
        for _ in 0..3 {
            let tx = writer.unchecked_transaction().unwrap();
            for _ in 0..1500 {
                tx.execute("INSERT INTO t (x) VALUES (?)", [&row]).unwrap();
            }
            tx.commit().unwrap();
            checkpoints.wake();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !checkpoints.restart.load(Ordering::Relaxed) {
            assert!(
                Instant::now() < deadline,
                "the thread never asked for a restart"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let copied = std::fs::metadata(&path).unwrap().len();
        assert!(copied > 4 << 20, "the thread copied pages: {copied} bytes");
        assert!(checkpoints.restart_wanted());
        assert!(!checkpoints.restart_wanted(), "asked once");
        let wal = restart_wal(&writer).unwrap();
        assert_eq!(wal.frames, wal.copied, "everything is copied");
        // The next commit starts the WAL over.
        writer
            .execute("INSERT INTO t (x) VALUES (?)", [&row])
            .unwrap();
        assert!(wal_frames(&writer) < 10, "the WAL started over");
        checkpoints.stop().await;
        // What was written is in the database file itself.
        drop(writer);
        let fresh = Connection::open(&path).unwrap();
        let rows: i64 = fresh
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 4501);
    }
}
