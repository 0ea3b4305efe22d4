//! One realtime session: concurrent calls and pushed events over a socket
//! owned by a background task.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use conclave_core::ChannelId;
use conclave_protocol::api::{AckPayload, EventPayload, Route};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::envelope;
use crate::error::{ClientError, CloseReason, Goaway};
use crate::session::{Command, Session, Timings, Wire};
use crate::wire::framed::Framed;
use crate::wire::json::JsonWire;
use crate::wire::noise::{self, NoiseOptions};
use crate::wire::quic;
use crate::wire::ws::{self, WsFrames};
use crate::{
    CLOSE_TIMEOUT, COMMAND_QUEUE_CAPACITY, CONNECT_TIMEOUT, EVENT_QUEUE_CAPACITY, IN_FLIGHT_MAX,
    KEEPALIVE_INTERVAL, REQUEST_TIMEOUT, SEND_TIMEOUT, SILENCE_TIMEOUT,
};

/// How requests, responses and events are written on the WebSocket.
///
/// Sessions over TCP+Noise and QUIC always carry CCP-1 frames, and report
/// [`Encoding::Binary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Text messages holding JSON envelopes.
    Json,
    /// Binary messages holding CCP-1 frames.
    Binary,
}

impl Encoding {
    /// The value of the `encoding` query parameter.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }
}

/// An event the server pushed.
#[derive(Debug, Clone)]
pub struct Event {
    /// One of [`crate::api::events`], e.g. `user/updated`.
    pub name: String,
    /// The channel it concerns, if any.
    pub channel_id: Option<ChannelId>,
    /// Its position in the channel's event log, if it has one.
    pub pts: Option<u64>,
    /// The body as the server encoded it (a JSON object), parsed only when
    /// asked for: [`Event::body_as`] into a type, [`Event::body`] into a
    /// JSON tree.
    pub raw_body: Box<RawValue>,
}

impl Event {
    pub(crate) fn from_payload(payload: EventPayload<Box<RawValue>>) -> Self {
        Self {
            name: payload.event,
            channel_id: payload.channel_id,
            pts: payload.pts,
            raw_body: payload.body,
        }
    }

    /// The body as a typed value, e.g. a `UserProfile` for `user/updated`.
    /// `T` may borrow from the event (`&str` fields, say).
    ///
    /// # Errors
    ///
    /// [`ClientError::Protocol`] if the body does not match `T`.
    pub fn body_as<'a, T: Deserialize<'a>>(&'a self) -> Result<T, ClientError> {
        serde_json::from_str(self.raw_body.get()).map_err(|err| {
            ClientError::Protocol(format!(
                "the body of event `{}` does not match its type: {err}",
                self.name
            ))
        })
    }

    /// The body as a JSON tree (`Value::Null` in the impossible case that
    /// the server's encoding is not JSON).
    #[must_use]
    pub fn body(&self) -> Value {
        serde_json::from_str(self.raw_body.get()).unwrap_or(Value::Null)
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.channel_id == other.channel_id
            && self.pts == other.pts
            && self.raw_body.get() == other.raw_body.get()
    }
}

/// Timeouts and intervals of a connection; the defaults are the crate's
/// constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The local address to connect from (WebSocket and TCP+Noise; QUIC
    /// ignores it), with a port the system picks; `None` (the default) lets the system choose
    /// both. A load generator spreads its connections over several source
    /// addresses (e.g. across 127.0.0.0/8) because each address has only
    /// the ephemeral port range (about 28 000 ports) to connect from.
    pub local_addr: Option<IpAddr>,
    /// See [`CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// See [`SILENCE_TIMEOUT`].
    pub silence_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            keepalive_interval: KEEPALIVE_INTERVAL,
            silence_timeout: SILENCE_TIMEOUT,
            local_addr: None,
        }
    }
}

/// A realtime session with the server.
///
/// Calls take `&self`, so many may run at once (share the connection by
/// reference or in an `Arc`); responses are matched to calls by request id.
/// Events are read with `&mut self`, by one consumer.
///
/// A background task owns the socket. It answers the server's pings, sends
/// a keepalive every [`KEEPALIVE_INTERVAL`], and ends when the connection
/// closes or this value is dropped.
pub struct Connection {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    close: watch::Receiver<Option<CloseReason>>,
    next_id: AtomicU64,
    in_flight: Semaphore,
    request_timeout: Duration,
    encoding: Encoding,
    task: JoinHandle<()>,
    /// Stops the task when the connection is dropped without `close`.
    cancel: DropGuard,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("encoding", &self.encoding)
            .field("close_reason", &self.close_reason())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens a session on `{base_url}/v1/ws` (`http`/`https` base URLs are
    /// turned into `ws`/`wss`), authenticated by `token`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] when the server refuses the token
    /// (`unauthenticated`, `token_expired`, `session_kicked`, ...),
    /// [`ClientError::Timeout`] after [`CONNECT_TIMEOUT`],
    /// [`ClientError::Transport`] when the server cannot be reached.
    pub async fn connect_ws(
        base_url: &str,
        token: &str,
        encoding: Encoding,
    ) -> Result<Self, ClientError> {
        Self::connect_ws_with(base_url, token, encoding, ConnectOptions::default()).await
    }

    /// [`Connection::connect_ws`] with other timings.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect_ws`].
    pub async fn connect_ws_with(
        base_url: &str,
        token: &str,
        encoding: Encoding,
        options: ConnectOptions,
    ) -> Result<Self, ClientError> {
        let socket = ws::connect(
            base_url,
            token,
            encoding,
            options.connect_timeout,
            options.local_addr,
        )
        .await?;
        Ok(match encoding {
            Encoding::Json => Self::start(JsonWire::new(socket), encoding, options),
            Encoding::Binary => Self::start(Framed::new(WsFrames::new(socket)), encoding, options),
        })
    }

    /// Opens a session over TCP wrapped in a Noise tunnel (XK or IK, see
    /// [`NoiseOptions`]) and returns it with the server's [`AckPayload`].
    ///
    /// No access token travels: the device authenticates by proving the
    /// static key it registered at login, and the server by the key the
    /// client pinned.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] when the server refuses the handshake, with its
    /// code: `key_mismatch` (not the device's registered key),
    /// `device_revoked` (an unknown or revoked device, or one without a live
    /// login, e.g. after a kick), `handshake_failed` (among others, when
    /// `server_public_key` is not the server's key);
    /// [`ClientError::Timeout`] after [`CONNECT_TIMEOUT`];
    /// [`ClientError::Transport`] when the server cannot be reached;
    /// [`ClientError::Protocol`] when its answers make no sense.
    pub async fn connect_tcp(
        addr: SocketAddr,
        options: NoiseOptions,
    ) -> Result<(Self, AckPayload), ClientError> {
        Self::connect_tcp_with(addr, options, ConnectOptions::default()).await
    }

    /// [`Connection::connect_tcp`] with other timings (and, optionally, a
    /// local address to connect from).
    ///
    /// # Errors
    ///
    /// As [`Connection::connect_tcp`].
    pub async fn connect_tcp_with(
        addr: SocketAddr,
        options: NoiseOptions,
        timings: ConnectOptions,
    ) -> Result<(Self, AckPayload), ClientError> {
        let (frames, ack) = tokio::time::timeout(
            timings.connect_timeout,
            noise::connect(addr, &options, timings.local_addr),
        )
        .await
        .map_err(|_| ClientError::Timeout("the TCP+Noise handshake"))??;
        let connection = Self::start(Framed::new(frames), Encoding::Binary, timings);
        Ok((connection, ack))
    }

    /// Opens a session over QUIC, authenticated by `token`, and returns it
    /// with the server's [`AckPayload`].
    ///
    /// The server's certificate is pinned: it is accepted only if the
    /// SHA-256 of its DER is `cert_sha256_hex` (64 hex digits, as
    /// `GET /v1/server-info` publishes it in `quic_cert_sha256`).
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] when the server refuses the token
    /// (`unauthenticated`, `token_expired`, `session_kicked`, ...);
    /// [`ClientError::Transport`] when the server cannot be reached, its
    /// certificate is not the pinned one, or the fingerprint is malformed;
    /// [`ClientError::Timeout`] after [`CONNECT_TIMEOUT`];
    /// [`ClientError::Protocol`] when its answers make no sense.
    pub async fn connect_quic(
        addr: SocketAddr,
        token: &str,
        cert_sha256_hex: &str,
    ) -> Result<(Self, AckPayload), ClientError> {
        Self::connect_quic_with(addr, token, cert_sha256_hex, ConnectOptions::default()).await
    }

    /// [`Connection::connect_quic`] with other timings. The QUIC idle
    /// timeout is the silence timeout.
    ///
    /// # Errors
    ///
    /// As [`Connection::connect_quic`].
    pub async fn connect_quic_with(
        addr: SocketAddr,
        token: &str,
        cert_sha256_hex: &str,
        timings: ConnectOptions,
    ) -> Result<(Self, AckPayload), ClientError> {
        let pinned = quic::parse_fingerprint(cert_sha256_hex)?;
        let (frames, ack) = tokio::time::timeout(
            timings.connect_timeout,
            quic::connect(addr, token, pinned, timings.silence_timeout),
        )
        .await
        .map_err(|_| ClientError::Timeout("the QUIC handshake"))??;
        let connection = Self::start(Framed::new(frames), Encoding::Binary, timings);
        Ok((connection, ack))
    }

    /// Spawns the I/O task over an open wire.
    pub(crate) fn start<W: Wire>(wire: W, encoding: Encoding, options: ConnectOptions) -> Self {
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE_CAPACITY);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_CAPACITY);
        let (close_tx, close_rx) = watch::channel(None);
        let cancel = CancellationToken::new();
        let session = Session {
            wire,
            commands: commands_rx,
            events: events_tx,
            close: close_tx,
            cancel: cancel.clone(),
            timings: Timings {
                keepalive_interval: options.keepalive_interval,
                silence_timeout: options.silence_timeout,
            },
        };
        let task = tokio::spawn(session.run());
        Self {
            commands: commands_tx,
            events: events_rx,
            close: close_rx,
            next_id: AtomicU64::new(1),
            in_flight: Semaphore::new(IN_FLIGHT_MAX),
            request_timeout: options.request_timeout,
            encoding,
            task,
            cancel: cancel.drop_guard(),
        }
    }

    /// The encoding chosen at connect.
    #[must_use]
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Calls a route with a typed request.
    ///
    /// # Errors
    ///
    /// [`ClientError::Api`] when the server refuses the request,
    /// [`ClientError::Closed`] when the connection is (or gets) closed,
    /// [`ClientError::Timeout`] after the request timeout
    /// ([`REQUEST_TIMEOUT`] by default), [`ClientError::Protocol`] when the
    /// request cannot be encoded or the answer does not match the route's
    /// response type.
    pub async fn call<R: Route>(&self, request: &R) -> Result<R::Response, ClientError> {
        let body = envelope::to_body(R::NAME, request)?;
        let response = self.timed_exchange(R::NAME, body).await?;
        envelope::typed(R::NAME, response.get().as_bytes())
    }

    /// Calls a route with any JSON body and returns the response body as is.
    ///
    /// # Errors
    ///
    /// As [`Connection::call`], without the type check.
    pub async fn call_raw(&self, route: &str, body: Value) -> Result<Value, ClientError> {
        let response = self.timed_exchange(route, body).await?;
        envelope::typed(route, response.get().as_bytes())
    }

    async fn timed_exchange(&self, route: &str, body: Value) -> Result<Box<RawValue>, ClientError> {
        tokio::time::timeout(self.request_timeout, self.exchange(route, body))
            .await
            .map_err(|_| ClientError::Timeout("a response"))?
    }

    async fn exchange(&self, route: &str, body: Value) -> Result<Box<RawValue>, ClientError> {
        if self.close.borrow().is_some() {
            return Err(self.closed_error());
        }
        // Held until the response arrives: bounds the pending table.
        let _slot = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| self.closed_error())?;
        let (reply, response) = oneshot::channel();
        let command = Command {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            route: route.to_owned(),
            body,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| self.closed_error())?;
        // A dropped reply means the task ended without answering: closed.
        response.await.unwrap_or_else(|_| Err(self.closed_error()))
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.goaway())
    }

    /// The next pushed event; `None` once the connection is closed and every
    /// event received before that has been returned.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// [`Connection::next_event`], waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] when no event arrives in time.
    pub async fn next_event_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<Event>, ClientError> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .map_err(|_| ClientError::Timeout("an event"))
    }

    /// Why the server closed the connection, once it said so.
    #[must_use]
    pub fn goaway(&self) -> Option<Goaway> {
        self.close
            .borrow()
            .as_ref()
            .and_then(CloseReason::goaway)
            .cloned()
    }

    /// Why the connection ended, or `None` while it is open.
    #[must_use]
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.borrow().clone()
    }

    /// Whether the connection has ended.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// Waits until the connection ends and says why. Bound the wait with
    /// `tokio::time::timeout`: an open connection may stay open forever.
    pub async fn closed(&self) -> CloseReason {
        let mut close = self.close.clone();
        match close.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Local),
            // The task is gone without a word; only a panic does that.
            Err(_) => CloseReason::Disconnected("the connection task ended".to_owned()),
        }
    }

    /// Closes the connection (WebSocket closing handshake included) and
    /// waits for its task to end. Calls still in flight fail with
    /// [`ClientError::Closed`].
    pub async fn close(self) {
        let Self { task, cancel, .. } = self;
        cancel.disarm().cancel();
        // The task notices the cancellation after at most one socket write
        // and then spends at most the close timeout on the handshake.
        let mut task = task;
        if tokio::time::timeout(SEND_TIMEOUT + CLOSE_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
