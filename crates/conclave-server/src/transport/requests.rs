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

use crate::api_error::ApiError;
use crate::mailbox::Mailbox;
use crate::rpc::{Answer, RpcContext};
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
type ReplyQueue<R> = Mailbox<(R, OwnedSemaphorePermit)>;

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

    /// The replies waiting to be written, with their permits.
    pub fn replies(&self) -> &ReplyQueue<R> {
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

    /// Runs a request on its own task; `to_reply` turns its answer into the
    /// reply, which queues with `permit` until it is written.
    pub fn spawn_call(
        &self,
        ctx: RpcContext,
        permit: OwnedSemaphorePermit,
        route: String,
        body: serde_json::Value,
        to_reply: impl FnOnce(Result<Answer, ApiError>) -> R + Send + 'static,
    ) where
        R: 'static,
    {
        let replies = self.replies.clone();
        let tasks = ctx.state.tasks.clone();
        tasks.spawn(async move {
            let routes = ctx.state.clone();
            let result = routes.routes.dispatch(ctx, &route, body).await;
            // The permit holds a place in the queue; a closed queue means
            // the session ended.
            let _ = replies.try_send((to_reply(result), permit));
        });
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
