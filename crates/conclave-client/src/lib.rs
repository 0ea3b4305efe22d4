//! Async client SDK for Conclave.
//!
//! Two ways to reach the server:
//!
//! - [`HttpClient`]: one `POST /api/v1/<route>` per call; no session, no
//!   events. Registration and login live here because they precede any
//!   token, and so does [`server_info`], which publishes the keys to pin.
//! - [`Connection`]: one realtime session. Calls may run concurrently on
//!   it, and the server pushes [`Event`]s into it. Three transports carry
//!   it, with the same calls and events on each:
//!   - the WebSocket (`/v1/ws`), in JSON or CCP-1 binary [`Encoding`]
//!     ([`Connection::connect_ws`]);
//!   - TCP inside a Noise tunnel, XK or IK, where the device proves the
//!     static key it registered at login ([`Connection::connect_tcp`],
//!     [`NoiseOptions`], [`generate_device_keypair`]);
//!   - QUIC with a pinned certificate, authenticated by the access token
//!     ([`Connection::connect_quic`]).
//!
//! Requests are typed by [`conclave_protocol::api::Route`], so the SDK and
//! the server share one schema; `call_raw` exists for routes or bodies the
//! schema does not (yet) describe, and for testing the server's refusals.
//!
//! # Resource bounds
//!
//! Every queue in the SDK has a fixed capacity, and every wait the SDK makes
//! (connecting, a call, a socket write, the closing handshake) a timeout;
//! both are the named constants below. The only unbounded waits are the ones
//! the application asks for by name ([`Connection::next_event`],
//! [`Connection::closed`]), and each has a bounded variant or is meant to be
//! wrapped in `tokio::time::timeout`. When the application does not keep up,
//! the SDK pushes back instead of buffering: callers wait for room to send,
//! and unread events stop the connection from reading the socket (see
//! [`EVENT_QUEUE_CAPACITY`]).

mod connection;
mod envelope;
mod error;
mod http;
mod session;
mod wire;

use std::time::Duration;

pub use connection::{ConnectOptions, Connection, Encoding, Event};
pub use error::{ClientError, CloseReason, Goaway};
pub use http::{HttpClient, ServerInfo, server_info};
pub use wire::noise::NoiseOptions;

/// Re-exported so that callers can name request and response types without
/// depending on the protocol crate themselves.
pub use conclave_protocol::api;
/// What the server says when a TCP or QUIC session starts.
pub use conclave_protocol::api::AckPayload as Ack;
/// The Noise handshake patterns and static key pairs of the TCP transport.
pub use conclave_tunnel::{Keypair, Pattern};

/// A fresh X25519 static key pair for a device, from OS randomness. Register
/// its `public` half at login (`noise_public_key`) and keep the pair to
/// open TCP+Noise sessions as that device.
///
/// # Errors
///
/// [`ClientError::Protocol`] if no randomness or X25519 implementation is
/// available.
pub fn generate_device_keypair() -> Result<Keypair, ClientError> {
    conclave_tunnel::generate_keypair()
        .map_err(|err| ClientError::Protocol(format!("cannot generate a device key: {err}")))
}

/// How long opening a session may take: for the WebSocket the TCP connect,
/// upgrade and authentication; for TCP+Noise the connect, the handshake and
/// the server's `Ack`; for QUIC the connect, the TLS handshake and the
/// `Ack`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one call may take, from waiting for room to send until its
/// response arrives. Generous, because the server may queue a session's
/// requests behind its in-flight limit; short enough that a lost response
/// surfaces as an error instead of a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one HTTP call may take, body included.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a connection sends a WebSocket ping of its own. The server
/// closes connections it has heard nothing from for `limits.idle_timeout_ms`
/// (90 s by default); answering the server's pings keeps us alive too, but a
/// ping of our own does not depend on the server's heartbeat settings.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// A connection that has heard nothing at all (no message, no pong) for this
/// long is considered dead. Three keepalive intervals: a healthy server
/// answers every ping, so this only fires when the path is gone without a
/// TCP reset.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long writing one message to the socket may block. A peer that stops
/// reading fills the TCP buffers; rather than wedge the connection, we give
/// up on it.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the closing handshake may take before the socket is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Calls queued for the connection's I/O task. When full, `call` waits for
/// room (backpressure on the caller); nothing is dropped.
pub const COMMAND_QUEUE_CAPACITY: usize = 256;

/// Calls one connection may have awaiting a response. Further calls wait for
/// a slot (within their [`REQUEST_TIMEOUT`]). This bounds the table of
/// pending responses; the server runs at most `limits.session_requests_in_flight`
/// (32 by default) of them at once anyway and stops reading while it waits.
pub const IN_FLIGHT_MAX: usize = 256;

/// Events received but not yet taken by [`Connection::next_event`].
///
/// Overflow policy: when this queue is full the connection stops reading
/// the socket until the application takes an event. Nothing is dropped, but
/// responses queue up behind the unread events, so calls on a connection
/// whose events nobody reads eventually time out, and the server, whose own
/// queue then fills, disconnects the session with `slow_consumer`. An
/// application that does not care about events should still drain them.
pub const EVENT_QUEUE_CAPACITY: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Connection>();
        shareable::<HttpClient>();
        shareable::<ClientError>();
        shareable::<Event>();
        shareable::<NoiseOptions>();
        shareable::<ServerInfo>();
    }
}
