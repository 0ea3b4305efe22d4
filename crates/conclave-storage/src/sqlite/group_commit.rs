//! Group commit for message sends.
//!
//! With `synchronous=FULL` every SQLite commit waits for an fsync, which
//! would cap sends at the disk's fsync rate. Instead one writer task takes
//! every send waiting in its queue (up to [`BATCH_MAX`]), stores them in one
//! transaction, each inside its own savepoint so a refused send does not
//! spoil its neighbours, commits once, hands the committed events to the
//! commit stream in order, and only then answers each sender: an answer
//! still means "durably committed".

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use conclave_core::{ChannelId, DeviceId, MessageId, UserId};
use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::messaging::{Tx, insert_message, recipients};
use crate::{Committed, NewMessage, SendOutcome, StorageError};

/// Sends waiting for the writer. When it is full, senders wait
/// (backpressure); nothing is dropped.
pub(super) const QUEUE_CAPACITY: usize = 4096;

/// Most sends in one transaction: enough to amortize the fsync, few enough
/// that the first sender of a batch does not wait long for the last.
const BATCH_MAX: usize = 256;

pub(super) struct SendRequest {
    pub message: OwnedMessage,
    pub reply: oneshot::Sender<Result<SendOutcome, StorageError>>,
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

impl OwnedMessage {
    fn borrowed(&self) -> NewMessage<'_> {
        NewMessage {
            channel_id: self.channel_id,
            sender_id: self.sender_id,
            sender_device_id: self.sender_device_id,
            client_msg_id: &self.client_msg_id,
            content: &self.content,
            search_text: self.search_text.as_deref(),
            reply_to: self.reply_to,
            mentions: &self.mentions,
            now_ms: self.now_ms,
            origin_session: self.origin_session,
        }
    }
}

pub(super) struct Writer {
    pub pool: SqlitePool,
    pub write_lock: Arc<tokio::sync::Mutex<()>>,
    pub commit_tx: mpsc::Sender<Committed>,
    pub commit_consumer: Arc<AtomicBool>,
}

/// Runs until every sender is gone (the storage closed), finishing the
/// sends already queued.
pub(super) async fn run(writer: Writer, mut requests: mpsc::Receiver<SendRequest>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while let Some(first) = requests.recv().await {
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match requests.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        writer.commit(&mut batch).await;
    }
}

/// One stored send: its outcome and, for a new message, who hears of it.
type Stored = Result<(SendOutcome, Option<Vec<UserId>>), StorageError>;

impl Writer {
    async fn commit(&self, batch: &mut Vec<SendRequest>) {
        // Held through the publishing below, so the commit stream sees
        // events in commit order.
        let _writer = self.write_lock.lock().await;
        crate::metrics::observe_send_batch(batch.len());
        let stored = crate::metrics::timed(super::BACKEND, "send_batch", self.store(batch)).await;
        match stored {
            Ok(outcomes) => {
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    let answer = match outcome {
                        Ok((outcome, recipients)) => {
                            if let (SendOutcome::Sent(event), Some(recipients)) =
                                (&outcome, recipients)
                            {
                                let committed = Committed {
                                    event: event.clone(),
                                    recipients,
                                    origin_session: request.message.origin_session,
                                };
                                super::publish(&self.commit_tx, &self.commit_consumer, committed)
                                    .await;
                            }
                            Ok(outcome)
                        }
                        Err(err) => Err(err),
                    };
                    // The sender may have given up waiting; the message is
                    // stored either way and a retry will find it.
                    let _ = request.reply.send(answer);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, sends = batch.len(), "a group of sends failed to commit");
                let reason = err.to_string();
                for request in batch.drain(..) {
                    let _ = request
                        .reply
                        .send(Err(StorageError::Database(reason.clone())));
                }
            }
        }
    }

    /// Stores the batch in one transaction and commits it.
    async fn store(&self, batch: &[SendRequest]) -> Result<Vec<Stored>, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            outcomes.push(store_one(&mut tx, &request.message).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

/// Stores one send inside a savepoint. `Err` only when the transaction
/// itself is broken; a refused send is an `Ok(Err(..))`.
async fn store_one(tx: &mut Tx<'_>, message: &OwnedMessage) -> Result<Stored, StorageError> {
    sqlx::query("SAVEPOINT send").execute(&mut **tx).await?;
    match insert_message(tx, &message.borrowed()).await {
        Ok(outcome) => {
            let recipients = match &outcome {
                SendOutcome::Sent(event) => Some(recipients(tx, event).await?),
                SendOutcome::Duplicate(_) => None,
            };
            sqlx::query("RELEASE send").execute(&mut **tx).await?;
            Ok(Ok((outcome, recipients)))
        }
        Err(err) => {
            sqlx::query("ROLLBACK TO send").execute(&mut **tx).await?;
            sqlx::query("RELEASE send").execute(&mut **tx).await?;
            Ok(Err(err))
        }
    }
}
