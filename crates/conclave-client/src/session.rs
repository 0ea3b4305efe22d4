//! The I/O task of one realtime connection, independent of its wire format.
//!
//! One task owns the socket (through a [`Wire`]), the table of calls
//! awaiting a response, and the sending side of the event queue. Nothing
//! else touches them, so none of them needs a lock: callers talk to the task
//! through the bounded command queue and a oneshot per call.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::connection::Event;
use crate::error::{ClientError, CloseReason, Goaway};
use crate::{CLOSE_TIMEOUT, SEND_TIMEOUT};

/// What one received message means to the session.
pub(crate) enum Inbound<O> {
    /// The answer to request `id`.
    Response {
        id: u64,
        result: Result<Box<RawValue>, ClientError>,
    },
    Event(Event),
    /// The server is about to close the connection, and says why.
    Goaway(Goaway),
    /// Something to send back at once (a pong).
    Reply(O),
    /// The server broke the protocol badly enough that the connection is
    /// unusable.
    Fatal(String),
}

/// A wire format over a live socket: how requests are put on it and how
/// received messages are read. Implemented by JSON-over-WebSocket and by
/// [`crate::wire::framed::Framed`] (CCP-1 frames over any frame transport).
pub(crate) trait Wire: Send + 'static {
    /// An encoded message, ready to send.
    type Out: Send + 'static;

    /// Encodes a request. An error concerns this request only.
    fn encode_request(&self, id: u64, route: &str, body: Value) -> Result<Self::Out, ClientError>;

    /// Sends one message; an error means the connection is broken.
    fn send(&mut self, out: Self::Out) -> impl Future<Output = Result<(), String>> + Send;

    /// Waits for the next message from the server and returns what it means
    /// (possibly nothing, e.g. for a pong), or why the connection ended.
    ///
    /// Must be cancel-safe: the session drops this future whenever a call or
    /// a timer needs attention, and no received data may be lost then.
    fn recv(&mut self)
    -> impl Future<Output = Result<Vec<Inbound<Self::Out>>, CloseReason>> + Send;

    /// Proves to the server that we are alive.
    fn keepalive(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Runs the closing handshake; the caller bounds it with a timeout.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// One call on its way to the I/O task.
pub(crate) struct Command {
    pub id: u64,
    pub route: String,
    pub body: Value,
    pub reply: oneshot::Sender<Result<Box<RawValue>, ClientError>>,
}

/// Timings of one connection (see [`crate::ConnectOptions`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timings {
    pub keepalive_interval: Duration,
    pub silence_timeout: Duration,
}

/// Everything the I/O task owns.
pub(crate) struct Session<W> {
    pub wire: W,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<Event>,
    pub close: watch::Sender<Option<CloseReason>>,
    pub cancel: CancellationToken,
    pub timings: Timings,
}

/// The table of calls awaiting a response.
type Pending = HashMap<u64, oneshot::Sender<Result<Box<RawValue>, ClientError>>>;

impl<W: Wire> Session<W> {
    pub(crate) async fn run(self) {
        let Self {
            mut wire,
            mut commands,
            events,
            close,
            cancel,
            timings,
        } = self;
        let mut pending = Pending::new();
        // Received but not yet handled; only ever non-empty while an event
        // waits for room in the event queue, and then no more is read, so
        // it holds at most one received message's worth of items.
        let mut inbox: VecDeque<Inbound<W::Out>> = VecDeque::new();
        let mut keepalive = tokio::time::interval_at(
            Instant::now() + timings.keepalive_interval,
            timings.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();

        let reason = 'session: loop {
            let blocked = loop {
                let Some(item) = inbox.pop_front() else {
                    break false;
                };
                match item {
                    Inbound::Response { id, result } => match pending.remove(&id) {
                        Some(reply) => {
                            let _ = reply.send(result);
                        }
                        None => {
                            tracing::debug!(id, "response to a call nobody awaits any more");
                        }
                    },
                    Inbound::Event(event) => match events.try_send(event) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(event)) => {
                            inbox.push_front(Inbound::Event(event));
                            break true;
                        }
                        // The connection is being dropped; nobody will read it.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    },
                    Inbound::Reply(out) => {
                        if let Err(why) = send(&mut wire, out).await {
                            break 'session CloseReason::Disconnected(why);
                        }
                    }
                    Inbound::Goaway(goaway) => break 'session CloseReason::Goaway(goaway),
                    Inbound::Fatal(why) => break 'session CloseReason::Disconnected(why),
                }
            };

            // Unbiased on purpose: neither a flood of calls nor a flood of
            // events may starve the other direction.
            tokio::select! {
                () = cancel.cancelled() => break CloseReason::Local,
                permit = events.reserve(), if blocked => {
                    if let (Ok(permit), Some(Inbound::Event(event))) = (permit, inbox.pop_front()) {
                        permit.send(event);
                    }
                }
                command = commands.recv() => {
                    // Every sender lives in the `Connection`, so the queue
                    // closing means it was dropped.
                    let Some(command) = command else { break CloseReason::Local };
                    match wire.encode_request(command.id, &command.route, command.body) {
                        Ok(out) => {
                            if let Err(why) = send(&mut wire, out).await {
                                break CloseReason::Disconnected(why);
                            }
                            pending.insert(command.id, command.reply);
                        }
                        Err(err) => {
                            let _ = command.reply.send(Err(err));
                        }
                    }
                }
                _ = keepalive.tick() => {
                    if blocked {
                        // We are not reading, so silence says nothing about
                        // the server.
                        last_heard = Instant::now();
                    } else if last_heard.elapsed() >= timings.silence_timeout {
                        break CloseReason::Disconnected(format!(
                            "nothing heard from the server for {} s",
                            timings.silence_timeout.as_secs()
                        ));
                    }
                    match tokio::time::timeout(SEND_TIMEOUT, wire.keepalive()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(why)) => break CloseReason::Disconnected(why),
                        Err(_) => break CloseReason::Disconnected(send_timed_out()),
                    }
                    // Calls that timed out leave their entry behind; their
                    // receivers are gone, so the entries can go too.
                    pending.retain(|_, reply| !reply.is_closed());
                }
                received = wire.recv(), if !blocked => match received {
                    Ok(items) => {
                        last_heard = Instant::now();
                        inbox.extend(items);
                    }
                    Err(reason) => break reason,
                },
            }
        };

        tracing::debug!(%reason, "connection ended");
        let goaway = reason.goaway().cloned();
        // Publish the reason before failing the calls, so that a caller who
        // sees `Closed` can already read why.
        close.send_replace(Some(reason));
        for (_, reply) in pending.drain() {
            let _ = reply.send(Err(ClientError::Closed(goaway.clone())));
        }
        commands.close();
        while let Ok(command) = commands.try_recv() {
            let _ = command.reply.send(Err(ClientError::Closed(goaway.clone())));
        }
        // Events received before the end are still the application's. Hand
        // over what fits now, so that `next_event` can report the end without
        // waiting for the closing handshake.
        let mut leftovers: VecDeque<Event> = inbox
            .into_iter()
            .filter_map(|item| match item {
                Inbound::Event(event) => Some(event),
                _ => None,
            })
            .collect();
        while let Some(event) = leftovers.pop_front() {
            if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
                leftovers.push_front(event);
                break;
            }
        }
        let events = (!leftovers.is_empty()).then_some(events);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wire.close()).await;
        drop(wire);
        // The rest wait for the application to read, or to drop the
        // connection.
        if let Some(events) = events {
            for event in leftovers {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    sent = events.send(event) => if sent.is_err() { break },
                }
            }
        }
    }
}

async fn send<W: Wire>(wire: &mut W, out: W::Out) -> Result<(), String> {
    tokio::time::timeout(SEND_TIMEOUT, wire.send(out))
        .await
        .unwrap_or_else(|_| Err(send_timed_out()))
}

fn send_timed_out() -> String {
    format!(
        "could not write to the socket for {} s; the server is not reading",
        SEND_TIMEOUT.as_secs()
    )
}
