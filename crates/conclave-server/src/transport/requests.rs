//! The requests a session runs at once and their replies waiting to be
//! written, the same on every session transport (WebSocket, TCP, QUIC).
//!
//! A request holds its permit until its reply is written, so the replies
//! waiting never outnumber the permits and their queue never refuses one.
//! While a message carrying many requests is read, a request that finds no
//! permit writes the waiting replies to free theirs instead of waiting on
//! them (the session loop is not writing replies meanwhile).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::mailbox::Mailbox;
use crate::sessions::{CloseReason, SessionHandle};

/// Where a session writes its replies.
pub(crate) trait ReplyWriter<R>: Send {
    /// Why the session ends when a write fails.
    type Stop: From<CloseReason> + Send;

    /// Writes `replies` in order, with one flush.
    fn write_replies(
        &mut self,
        replies: Vec<R>,
    ) -> impl Future<Output = Result<(), Self::Stop>> + Send;
}

/// A reply with the permit its request held.
pub(crate) type ReplyQueue<R> = Mailbox<(R, OwnedSemaphorePermit)>;

/// Most replies written with one flush.
const REPLY_BATCH_MAX: usize = 64;

pub(crate) struct Requests<R> {
    permits: Arc<Semaphore>,
    replies: Arc<ReplyQueue<R>>,
    session: Arc<SessionHandle>,
}

impl<R: Send> Requests<R> {
    pub fn new(in_flight: usize, session: Arc<SessionHandle>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(in_flight)),
            replies: Arc::new(Mailbox::new(in_flight)),
            session,
        }
    }

    /// The queue a request's task sends its reply and permit to.
    pub fn replies(&self) -> &Arc<ReplyQueue<R>> {
        &self.replies
    }

    /// A permit for one more request.
    pub async fn permit<W: ReplyWriter<R>>(
        &self,
        writer: &mut W,
    ) -> Result<OwnedSemaphorePermit, W::Stop> {
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Ok(permit);
            }
            tokio::select! {
                biased;
                Some(reply) = self.replies.recv() => {
                    Box::pin(self.write_replies(reply, writer)).await?;
                }
                permit = self.permits.clone().acquire_owned() => {
                    return permit.map_err(|_| {
                        CloseReason {
                            code: conclave_core::ErrorCode::Internal,
                            message: "session is closing".to_owned(),
                        }
                        .into()
                    });
                }
            }
        }
    }

    /// Writes `first` and the replies queued behind it, frees their
    /// permits, then ends the session if one of those requests asked for
    /// that (logout, revoking oneself).
    pub async fn write_replies<W: ReplyWriter<R>>(
        &self,
        first: (R, OwnedSemaphorePermit),
        writer: &mut W,
    ) -> Result<(), W::Stop> {
        let mut batch = vec![first];
        self.replies.drain_into(&mut batch, REPLY_BATCH_MAX);
        let (replies, permits): (Vec<R>, Vec<OwnedSemaphorePermit>) = batch.into_iter().unzip();
        writer.write_replies(replies).await?;
        drop(permits);
        match self.session.take_close_after_reply() {
            Some(reason) => Err(reason.into()),
            None => Ok(()),
        }
    }

    /// Refuses further replies: the session is ending.
    pub fn close(&self) {
        self.replies.close();
    }
}
