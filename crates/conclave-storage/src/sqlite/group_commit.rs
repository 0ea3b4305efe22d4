//! Group commit for message sends and document updates.
//!
//! With `synchronous=FULL` every SQLite commit waits for an fsync, which
//! would cap writes at the disk's fsync rate. Instead one writer task takes
//! every write waiting in its queue (up to [`BATCH_MAX`]), stores them in
//! one transaction on the write thread (a refused write does not spoil its
//! neighbours: see [`in_one_transaction`]), commits once, hands the
//! committed events to the commit stream in order, and only then answers
//! each writer: an answer still means "durably committed". While one batch
//! is answered, the next is already being stored (see [`run`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use conclave_core::{ChannelId, DeviceId, DocumentId, MessageId, UserId};
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::{Checkpoints, restart_wal};
use super::messaging::{APPEND_EVENT_SQL, INSERT_MESSAGE_SQL, MESSAGE_COLUMNS, message_from};
use super::search_backlog::{INDEX_SQL, Indexing, SearchBacklog, WAIT_SQL};
use super::sql_id;
use super::write_thread::{WriteThread, database};
use crate::{
    Audience, Committed, EventRecord, MessageRecord, NewMessage, SendOutcome, StorageError,
};

/// Writes waiting for the writer. When it is full, writers wait
/// (backpressure); nothing is dropped.
pub(super) const QUEUE_CAPACITY: usize = 4096;

/// Most writes in one transaction: enough to amortize the fsync, few
/// enough that the first writer of a batch does not wait long for the last.
const BATCH_MAX: usize = 256;

/// One write for the group-commit writer.
pub(super) enum WriteRequest {
    Send {
        message: OwnedMessage,
        reply: oneshot::Sender<Result<SendOutcome, StorageError>>,
    },
    /// A document update; answered with its sequence number.
    Append {
        update: OwnedUpdate,
        reply: oneshot::Sender<Result<u64, StorageError>>,
    },
}

/// A document update that can cross to the write thread.
pub(super) struct OwnedUpdate {
    pub document: DocumentId,
    pub bytes: Vec<u8>,
    pub now_ms: i64,
}

/// A [`NewMessage`] that can cross to the writer task.
pub(super) struct OwnedMessage {
    channel_id: ChannelId,
    sender_id: UserId,
    sender_device_id: DeviceId,
    client_msg_id: String,
    content: String,
    search_text: Option<String>,
    reply_to: Option<MessageId>,
    mentions: String,
    now_ms: i64,
    origin_session: Option<u64>,
}

impl From<&NewMessage<'_>> for OwnedMessage {
    fn from(message: &NewMessage<'_>) -> Self {
        Self {
            channel_id: message.channel_id,
            sender_id: message.sender_id,
            sender_device_id: message.sender_device_id,
            client_msg_id: message.client_msg_id.to_owned(),
            content: message.content.to_owned(),
            search_text: message.search_text.map(str::to_owned),
            reply_to: message.reply_to,
            mentions: message.mentions.to_owned(),
            now_ms: message.now_ms,
            origin_session: message.origin_session,
        }
    }
}

pub(super) struct Writer {
    pub thread: WriteThread,
    pub checkpoints: Checkpoints,
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
    pub commit_tx: mpsc::Sender<Committed>,
    pub commit_consumer: Arc<AtomicBool>,
    pub search: Arc<SearchBacklog>,
}

/// Runs until every writer is gone (the storage closed), finishing the
/// writes already queued.
///
/// The writer lock is held for a run of batches: while one batch is being
/// stored on the write thread, the batch before it (committed already) is
/// handed to the commit stream and answered, so the write thread does not
/// sit idle through the answers. The lock is let go once no write is
/// waiting, or after [`PIPELINE_MAX`] batches so that the pool's writers
/// get their turn.
pub(super) async fn run(writer: Writer, mut requests: mpsc::Receiver<WriteRequest>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = requests.recv().await {
        batch.push(first);
        // Held until every batch of the run is published, so the commit
        // stream sees events in commit order.
        let _writer = writer.write_lock.clone().lock_owned().await;
        let mut unanswered: Option<Answers> = None;
        for _ in 0..PIPELINE_MAX {
            take_waiting(&mut batch, &mut requests);
            if batch.is_empty() {
                break;
            }
            let answering = async {
                if let Some(previous) = unanswered.take() {
                    writer.answer(previous).await;
                }
            };
            let (stored, ()) = tokio::join!(writer.store(&mut batch), answering);
            unanswered = Some(stored);
            if writer.checkpoints.restart_wanted() {
                // After the answers, so only the next batch waits for it.
                if let Some(stored) = unanswered.take() {
                    writer.answer(stored).await;
                }
                let restarted = writer
                    .thread
                    .run(|connection| restart_wal(connection))
                    .await;
                if let Err(err) = restarted.and_then(|wal| wal) {
                    tracing::warn!(error = %err, "restarting the WAL failed");
                }
            }
        }
        if let Some(stored) = unanswered {
            writer.answer(stored).await;
        }
    }
    writer.checkpoints.stop().await;
}

/// Most batches stored in one run under the writer lock (see [`run`]).
const PIPELINE_MAX: usize = 8;

/// Moves the writes already waiting into `batch`, up to [`BATCH_MAX`].
fn take_waiting(batch: &mut Vec<WriteRequest>, requests: &mut mpsc::Receiver<WriteRequest>) {
    while batch.len() < BATCH_MAX {
        match requests.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// What the write thread is given: the batch without its reply channels.
enum Work {
    Send(OwnedMessage),
    Append(OwnedUpdate),
}

/// One stored send: its outcome and, for a new message, who hears of it.
type Stored = Result<(SendOutcome, Option<Vec<UserId>>), StorageError>;

/// What a batch stored, each kind in the order its writes were queued.
#[derive(Default)]
struct Outcomes {
    sends: Vec<Stored>,
    appends: Vec<Result<u64, StorageError>>,
}

type SendReply = oneshot::Sender<Result<SendOutcome, StorageError>>;
type AppendReply = oneshot::Sender<Result<u64, StorageError>>;

/// A committed (or failed) batch whose writers are not answered yet.
struct Answers {
    stored: Result<Outcomes, StorageError>,
    senders: Vec<(SendReply, Option<u64>)>,
    appenders: Vec<AppendReply>,
}

impl Writer {
    /// Stores and commits `batch` (emptying it) on the write thread.
    async fn store(&self, batch: &mut Vec<WriteRequest>) -> Answers {
        let mut work = Vec::with_capacity(batch.len());
        let mut senders: Vec<(SendReply, Option<u64>)> = Vec::new();
        let mut appenders: Vec<AppendReply> = Vec::new();
        for request in batch.drain(..) {
            match request {
                WriteRequest::Send { message, reply } => {
                    senders.push((reply, message.origin_session));
                    work.push(Work::Send(message));
                }
                WriteRequest::Append { update, reply } => {
                    appenders.push(reply);
                    work.push(Work::Append(update));
                }
            }
        }
        if !senders.is_empty() {
            crate::metrics::observe_send_batch(senders.len());
        }
        let search = self.search.clone();
        let stored = crate::metrics::timed(
            super::BACKEND,
            "write_batch",
            self.thread
                .run(move |connection| store(connection, &work, &search)),
        )
        .await
        .and_then(|stored| stored);
        if stored.is_ok() {
            self.checkpoints.wake();
        }
        Answers {
            stored,
            senders,
            appenders,
        }
    }

    /// Hands a stored batch's events to the commit stream in order and
    /// answers its writers. A writer may have given up waiting; what it
    /// wrote is stored either way (a retried send finds its message).
    async fn answer(&self, answers: Answers) {
        let Answers {
            stored,
            senders,
            appenders,
        } = answers;
        match stored {
            Ok(outcomes) => {
                for ((reply, origin_session), stored) in senders.into_iter().zip(outcomes.sends) {
                    let _ = reply.send(self.publish(stored, origin_session).await);
                }
                for (reply, appended) in appenders.into_iter().zip(outcomes.appends) {
                    let _ = reply.send(appended);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, writes = senders.len() + appenders.len(), "a group of writes failed to commit");
                let failed = || StorageError::Database(err.to_string());
                for (reply, _) in senders {
                    let _ = reply.send(Err(failed()));
                }
                for reply in appenders {
                    let _ = reply.send(Err(failed()));
                }
            }
        }
    }

    /// Hands a new message's event to the commit stream; returns the
    /// sender's answer.
    async fn publish(
        &self,
        stored: Stored,
        origin_session: Option<u64>,
    ) -> Result<SendOutcome, StorageError> {
        let (outcome, recipients) = stored?;
        if let (SendOutcome::Sent(event), Some(recipients)) = (&outcome, recipients) {
            let committed = Committed {
                event: event.clone(),
                recipients,
                origin_session,
            };
            super::publish(&self.commit_tx, &self.commit_consumer, committed).await;
        }
        Ok(outcome)
    }
}

/// Stores the batch in one transaction and commits it (on the write
/// thread). `Err` only when the transaction itself failed.
fn store(
    connection: &mut Connection,
    work: &[Work],
    search: &SearchBacklog,
) -> Result<Outcomes, StorageError> {
    let mut members = Members::default();
    let indexing = std::cell::Cell::new(Indexing::default());
    let done = in_one_transaction(
        connection,
        work,
        |tx, heads: &mut Heads, piece| match piece {
            Work::Send(message) => store_send(tx, &mut members, heads, message).map(Done::Sent),
            Work::Append(update) => store_update(tx, update).map(Done::Appended),
        },
        |tx, heads, done| {
            heads.write(tx)?;
            indexing.set(queue_search_text(tx, work, done, search)?);
            Ok(())
        },
    )?;
    search.committed(indexing.get());
    let mut outcomes = Outcomes::default();
    for (piece, done) in work.iter().zip(done) {
        match (piece, done) {
            (_, Ok(Done::Sent(sent))) => outcomes.sends.push(Ok(sent)),
            (_, Ok(Done::Appended(seq))) => outcomes.appends.push(Ok(seq)),
            (Work::Send(_), Err(err)) => outcomes.sends.push(Err(err)),
            (Work::Append(_), Err(err)) => outcomes.appends.push(Err(err)),
        }
    }
    Ok(outcomes)
}

/// What one stored write gave back.
#[allow(
    clippy::large_enum_variant,
    reason = "kept in one vector per batch and moved once; a box would cost an allocation per send"
)]
enum Done {
    Sent((SendOutcome, Option<Vec<UserId>>)),
    Appended(u64),
}

/// Runs `write` for every piece in one transaction, then `finish` with
/// what they gave, then commits. A refused piece leaves no trace and does
/// not spoil its neighbours. Each run starts from a fresh `S`, which the
/// pieces share and `finish` consumes: what a batch keeps in memory
/// instead of writing per piece.
///
/// A savepoint per piece would guarantee that, but it costs a copy of
/// every page the piece touches, and almost every refusal (not a member, a
/// duplicate, no such document) comes from a check before the piece writes
/// anything. So the pieces first run without savepoints; if one is refused
/// after it changed rows, the transaction is rolled back and the batch runs
/// again with a savepoint per piece. `Err` only when the transaction itself
/// failed: then nothing of the batch is stored.
fn in_one_transaction<P, R, S: Default>(
    connection: &mut Connection,
    pieces: &[P],
    mut write: impl FnMut(&Connection, &mut S, &P) -> Result<R, StorageError>,
    finish: impl Fn(&Connection, S, &[Result<R, StorageError>]) -> Result<(), StorageError>,
) -> Result<Vec<Result<R, StorageError>>, StorageError> {
    if let Some(done) = attempt(connection, pieces, &mut write, &finish, false)? {
        return Ok(done);
    }
    crate::metrics::count_batch_retry();
    attempt(connection, pieces, &mut write, &finish, true)?.ok_or_else(|| {
        StorageError::Database("a batch with savepoints asked to be run again".into())
    })
}

/// One run of [`in_one_transaction`]; `None` when a piece without a
/// savepoint was refused after it wrote (the transaction is rolled back).
fn attempt<P, R, S: Default>(
    connection: &mut Connection,
    pieces: &[P],
    write: &mut impl FnMut(&Connection, &mut S, &P) -> Result<R, StorageError>,
    finish: &impl Fn(&Connection, S, &[Result<R, StorageError>]) -> Result<(), StorageError>,
    savepoints: bool,
) -> Result<Option<Vec<Result<R, StorageError>>>, StorageError> {
    let mut tx = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(database)?;
    let mut state = S::default();
    let mut done = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let result = if savepoints {
            let mut savepoint = tx.savepoint().map_err(database)?;
            let result = write(&savepoint, &mut state, piece);
            if result.is_err() {
                savepoint.rollback().map_err(database)?;
            }
            savepoint.commit().map_err(database)?;
            result
        } else {
            let before = tx.total_changes();
            let result = write(&tx, &mut state, piece);
            if result.is_err() && tx.total_changes() != before {
                return Ok(None);
            }
            result
        };
        // Some failures (a full disk, an I/O error) make SQLite roll the
        // whole transaction back; what follows would run outside it.
        if let Err(err) = &result
            && tx.is_autocommit()
        {
            return Err(StorageError::Database(format!(
                "the transaction was rolled back: {err}"
            )));
        }
        done.push(result);
    }
    finish(&tx, state, &done)?;
    tx.commit().map_err(database)?;
    Ok(Some(done))
}

/// Adds the search text of the batch's stored messages to the search
/// backlog, after every write (never inside the savepoints, which FTS5
/// would each close with a segment), and indexes the backlog when it is
/// due (see [`super::search_backlog`]).
fn queue_search_text(
    tx: &Connection,
    work: &[Work],
    done: &[Result<Done, StorageError>],
    search: &SearchBacklog,
) -> Result<Indexing, StorageError> {
    let mut added = 0;
    for (piece, done) in work.iter().zip(done) {
        let (Work::Send(message), Ok(Done::Sent((SendOutcome::Sent(event), _)))) = (piece, done)
        else {
            continue;
        };
        let (Some(id), Some(text)) = (
            event.message_id,
            message.search_text.as_deref().filter(|t| !t.is_empty()),
        ) else {
            continue;
        };
        tx.prepare_cached(WAIT_SQL)
            .and_then(|mut statement| statement.execute(params![sql_id(id.get()), text]))
            .map_err(database)?;
        added += 1;
    }
    let indexed = search.due(added);
    if indexed {
        for sql in INDEX_SQL {
            tx.prepare_cached(sql)
                .and_then(|mut statement| statement.execute([]))
                .map_err(database)?;
        }
    }
    Ok(Indexing { added, indexed })
}

/// The members of each channel a batch sends to, read once per batch.
/// Exact for the whole batch: it holds the write transaction, and its sends
/// and appends never change who is a member.
#[derive(Default)]
struct Members(HashMap<ChannelId, Vec<UserId>>);

impl Members {
    fn of(&mut self, tx: &Connection, channel: ChannelId) -> Result<&[UserId], StorageError> {
        Ok(match self.0.entry(channel) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(unknown) => unknown.insert(read_members(tx, channel)?),
        })
    }
}

/// Each channel's event-log head as the batch moves it: read at the
/// channel's first send, kept here, and written once before the commit,
/// instead of an `UPDATE channels` per message.
///
/// A send takes its pts in two steps, [`Heads::next`] before it writes and
/// [`Heads::take`] once everything it writes is stored, so a send refused
/// half way (and rolled back to its savepoint) leaves the head as it was.
#[derive(Default)]
struct Heads(HashMap<ChannelId, Head>);

struct Head {
    pts: i64,
    /// The newest message's time, once the batch stored one.
    last_activity_ms: Option<i64>,
}

impl Heads {
    /// The pts the channel's next event gets; not taken until [`Heads::take`].
    fn next(&mut self, tx: &Connection, channel: ChannelId) -> Result<i64, StorageError> {
        let head = match self.0.entry(channel) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(unknown) => {
                let pts: i64 = tx
                    .prepare_cached("SELECT pts FROM channels WHERE id = ?")
                    .and_then(|mut statement| {
                        statement
                            .query_row([sql_id(channel.get())], |row| row.get(0))
                            .optional()
                    })
                    .map_err(database)?
                    .ok_or_else(|| StorageError::NotFound(format!("no channel {channel}")))?;
                unknown.insert(Head {
                    pts,
                    last_activity_ms: None,
                })
            }
        };
        Ok(head.pts + 1)
    }

    /// Records that a message stored at `pts` (from [`Heads::next`]) is the
    /// channel's newest.
    fn take(&mut self, channel: ChannelId, pts: i64, now_ms: i64) {
        if let Some(head) = self.0.get_mut(&channel) {
            head.pts = pts;
            head.last_activity_ms = Some(now_ms);
        }
    }

    /// Writes every moved head: the channel's pts, its newest message, and
    /// its last activity.
    fn write(self, tx: &Connection) -> Result<(), StorageError> {
        let mut statement = tx
            .prepare_cached(
                "UPDATE channels SET pts = ?, last_message_pts = ?, last_activity_at = ? \
                 WHERE id = ?",
            )
            .map_err(database)?;
        for (channel, head) in self.0 {
            if let Some(now_ms) = head.last_activity_ms {
                statement
                    .execute(params![head.pts, head.pts, now_ms, sql_id(channel.get())])
                    .map_err(database)?;
            }
        }
        Ok(())
    }
}

fn store_send(
    tx: &Connection,
    members: &mut Members,
    heads: &mut Heads,
    message: &OwnedMessage,
) -> Stored {
    let outcome = insert_message(tx, members, heads, message)?;
    let recipients = match &outcome {
        SendOutcome::Sent(event) => Some(members.of(tx, event.channel_id)?.to_vec()),
        SendOutcome::Duplicate(_) => None,
    };
    Ok((outcome, recipients))
}

/// Stores one message and its event: the rusqlite twin of the pool's
/// `messaging::insert_message` rules (a repeated `client_msg_id` returns
/// the original; only members send; a reply stays in its channel).
///
/// The duplicate check is the insert itself: `ON CONFLICT DO NOTHING` on
/// the `(sender, device, client_msg_id)` key, and the original is read
/// only when nothing was inserted. A sender no longer a member is looked up
/// first, so a retry of what it sent before still finds its message.
fn insert_message(
    tx: &Connection,
    members: &mut Members,
    heads: &mut Heads,
    message: &OwnedMessage,
) -> Result<SendOutcome, StorageError> {
    let channel = sql_id(message.channel_id.get());
    if !members
        .of(tx, message.channel_id)?
        .contains(&message.sender_id)
    {
        return match original(tx, message)? {
            Some(found) => Ok(SendOutcome::Duplicate(found)),
            None => Err(StorageError::NotFound(format!(
                "no channel {} with this member",
                message.channel_id
            ))),
        };
    }
    if let Some(reply_to) = message.reply_to {
        let same_channel = tx
            .prepare_cached("SELECT 1 FROM messages WHERE id = ? AND channel_id = ?")
            .and_then(|mut statement| statement.exists(params![sql_id(reply_to.get()), channel]))
            .map_err(database)?;
        if !same_channel {
            // Checked before the duplicate check: a retry names the same
            // reply as its original, which passed this check.
            return Err(StorageError::Invalid(format!(
                "reply_to: no message {reply_to} in this channel"
            )));
        }
    }
    // The channel's next pts, taken by the message and its event alike.
    let next = heads.next(tx, message.channel_id)?;
    let inserted = tx
        .prepare_cached(INSERT_MESSAGE_SQL)
        .and_then(|mut statement| {
            statement.execute(params![
                channel,
                next,
                sql_id(message.sender_id.get()),
                sql_id(message.sender_device_id.get()),
                message.client_msg_id,
                message.content,
                message.reply_to.map(|m| sql_id(m.get())),
                message.mentions,
                message.now_ms
            ])
        })
        .map_err(database)?;
    if inserted == 0 {
        let found = original(tx, message)?.ok_or_else(|| {
            StorageError::Database("a send conflicted with no stored message".to_owned())
        })?;
        return Ok(SendOutcome::Duplicate(found));
    }
    let id = tx.last_insert_rowid();
    tx.prepare_cached(APPEND_EVENT_SQL)
        .and_then(|mut statement| {
            statement.execute(params![
                channel,
                next,
                "message",
                id,
                sql_id(message.sender_id.get()),
                "members",
                "{}",
                message.now_ms
            ])
        })
        .map_err(database)?;
    heads.take(message.channel_id, next, message.now_ms);
    let pts = u64::try_from(next).unwrap_or(0);
    let stored = MessageRecord {
        id: MessageId::new(id as u64),
        channel_id: message.channel_id,
        pts,
        sender_id: message.sender_id,
        sender_device_id: message.sender_device_id,
        client_msg_id: message.client_msg_id.clone(),
        content: Some(message.content.clone()),
        reply_to: message.reply_to,
        mentions: message.mentions.clone(),
        created_at_ms: message.now_ms,
        revoked_at_ms: None,
        revoked_by: None,
        pinned: false,
    };
    Ok(SendOutcome::Sent(EventRecord {
        channel_id: message.channel_id,
        pts,
        kind: "message".to_owned(),
        message_id: Some(stored.id),
        actor_id: message.sender_id,
        audience: Audience::Members,
        body: "{}".to_owned(),
        created_at_ms: message.now_ms,
        message: Some(stored),
    }))
}

/// The message `message` repeats (same sender, device and
/// `client_msg_id`), if one is stored.
fn original(
    tx: &Connection,
    message: &OwnedMessage,
) -> Result<Option<MessageRecord>, StorageError> {
    let found = tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m \
             WHERE m.sender_id = ? AND m.sender_device_id = ? AND m.client_msg_id = ?"
        ))
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        sql_id(message.sender_id.get()),
                        sql_id(message.sender_device_id.get()),
                        message.client_msg_id
                    ],
                    |row| message_from(row),
                )
                .optional()
        })
        .map_err(database)?;
    Ok(found.flatten())
}

fn read_members(tx: &Connection, channel: ChannelId) -> Result<Vec<UserId>, StorageError> {
    let mut statement = tx
        .prepare_cached("SELECT user_id FROM channel_members WHERE channel_id = ?")
        .map_err(database)?;
    let rows = statement
        .query_map([sql_id(channel.get())], |row| row.get::<_, i64>(0))
        .map_err(database)?;
    rows.map(|id| id.map(|id| UserId::new(id as u64)).map_err(database))
        .collect()
}

/// Appends one document update; its sequence comes from the document row
/// in the same transaction, so it survives compaction and never repeats.
fn store_update(tx: &Connection, update: &OwnedUpdate) -> Result<u64, StorageError> {
    let document = sql_id(update.document.get());
    let head: Option<i64> = tx
        .prepare_cached(
            "UPDATE documents SET head_seq = head_seq + 1 WHERE id = ? RETURNING head_seq",
        )
        .and_then(|mut statement| statement.query_row([document], |row| row.get(0)).optional())
        .map_err(database)?;
    let head =
        head.ok_or_else(|| StorageError::NotFound(format!("no document {}", update.document)))?;
    tx.prepare_cached(
        "INSERT INTO document_updates (document_id, seq, bytes, created_at) VALUES (?, ?, ?, ?)",
    )
    .and_then(|mut statement| {
        statement.execute(params![document, head, update.bytes, update.now_ms])
    })
    .map_err(database)?;
    Ok(u64::try_from(head).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A table where a piece `x` stores `x` and then `10 * x`; the second
    /// row is refused past 99. Negative pieces are refused before they
    /// write anything.
    fn table() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let connection = Connection::open(dir.path().join("batch.db")).unwrap();
        connection
            .execute_batch("CREATE TABLE t (x INTEGER NOT NULL CHECK (x < 100));")
            .unwrap();
        (dir, connection)
    }

    fn write(tx: &Connection, piece: &i64) -> Result<i64, StorageError> {
        if *piece < 0 {
            return Err(StorageError::Invalid(format!("{piece} is negative")));
        }
        for x in [*piece, piece * 10] {
            tx.execute("INSERT INTO t (x) VALUES (?)", [x])
                .map_err(database)?;
        }
        Ok(*piece)
    }

    fn rows(connection: &Connection) -> Vec<i64> {
        let mut statement = connection.prepare("SELECT x FROM t ORDER BY x").unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    fn outcomes(done: &[Result<i64, StorageError>]) -> Vec<Option<i64>> {
        done.iter().map(|d| d.as_ref().ok().copied()).collect()
    }

    #[test]
    fn a_piece_refused_before_writing_needs_no_second_run() {
        let (_dir, mut connection) = table();
        let runs = Cell::new(0);
        let done = in_one_transaction(
            &mut connection,
            &[1, -1, 2],
            |tx, _: &mut (), piece| {
                runs.set(runs.get() + 1);
                write(tx, piece)
            },
            |_, (), _| Ok(()),
        )
        .unwrap();
        assert_eq!(outcomes(&done), [Some(1), None, Some(2)]);
        assert_eq!(rows(&connection), [1, 2, 10, 20]);
        assert_eq!(runs.get(), 3, "one run, no savepoints");
    }

    #[test]
    fn a_piece_refused_after_writing_leaves_no_trace_and_spoils_no_neighbour() {
        let (_dir, mut connection) = table();
        let runs = Cell::new(0);
        let seen = Cell::new(0);
        let done = in_one_transaction(
            &mut connection,
            &[1, 50, 2, -3, 4],
            |tx, stored: &mut Vec<i64>, piece| {
                runs.set(runs.get() + 1);
                let result = write(tx, piece);
                if result.is_ok() {
                    stored.push(*piece);
                }
                result
            },
            |tx, stored, done| {
                // `finish` runs inside the transaction, after the pieces,
                // with the state of the run that is committed.
                assert_eq!(stored, [1, 2, 4], "a second run starts afresh");
                seen.set(done.len());
                tx.execute("INSERT INTO t (x) VALUES (99)", [])
                    .map_err(database)?;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(outcomes(&done), [Some(1), None, Some(2), None, Some(4)]);
        assert_eq!(rows(&connection), [1, 2, 4, 10, 20, 40, 99], "50 is gone");
        assert_eq!(runs.get(), 2 + 5, "stopped at 50, then ran again");
        assert_eq!(seen.get(), 5);
    }

    #[test]
    fn a_failed_finish_stores_nothing() {
        let (_dir, mut connection) = table();
        let failed = in_one_transaction(
            &mut connection,
            &[1, 2],
            |tx, _: &mut (), piece| write(tx, piece),
            |_, (), _| Err(StorageError::Database("no".into())),
        );
        assert!(failed.is_err());
        assert!(rows(&connection).is_empty());
    }
}
