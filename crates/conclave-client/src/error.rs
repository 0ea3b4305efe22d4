//! What can go wrong, and why a connection ended.

use std::fmt;

use conclave_protocol::api::{ErrorBody, GoawayPayload};

/// The server's explanation for closing a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goaway {
    /// A stable snake_case code from the server's error table
    /// (`session_kicked`, `idle_timeout`, `shutting_down`, ...).
    pub code: String,
    /// For humans; may be empty when the server gave only a code (in the
    /// reason of its WebSocket close frame).
    pub message: String,
}

impl From<GoawayPayload> for Goaway {
    fn from(payload: GoawayPayload) -> Self {
        Self {
            code: payload.code,
            message: payload.message,
        }
    }
}

impl fmt::Display for Goaway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

/// Why a [`crate::Connection`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The server closed it and said why.
    Goaway(Goaway),
    /// It ended without an explanation: the network failed, the server
    /// vanished or broke the protocol. The text is for humans.
    Disconnected(String),
    /// This side closed it ([`crate::Connection::close`] or drop).
    Local,
}

impl CloseReason {
    /// The server's explanation, if it gave one.
    #[must_use]
    pub fn goaway(&self) -> Option<&Goaway> {
        match self {
            Self::Goaway(goaway) => Some(goaway),
            Self::Disconnected(_) | Self::Local => None,
        }
    }

    /// The server's code for the close, if it gave one.
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        self.goaway().map(|goaway| goaway.code.as_str())
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Goaway(goaway) => write!(f, "closed by the server ({goaway})"),
            Self::Disconnected(why) => write!(f, "disconnected: {why}"),
            Self::Local => f.write_str("closed by the client"),
        }
    }
}

/// Everything a call or a connection attempt can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request with one of its error codes.
    #[error("{code}: {message}")]
    Api {
        code: String,
        message: String,
        /// For `rate_limited`: how long to wait before retrying.
        retry_after_ms: Option<u64>,
    },
    /// The connection is closed (or closed while the call was in flight, so
    /// it may or may not have taken effect); the goaway says why, when the
    /// server said.
    #[error("the connection is closed{}", closed_suffix(.0.as_ref()))]
    Closed(Option<Goaway>),
    /// A wait took longer than the named timeout allows.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The network or the HTTP/WebSocket layer failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The server sent something this SDK cannot understand, or a request
    /// could not be encoded.
    #[error("protocol error: {0}")]
    Protocol(String),
}

fn closed_suffix(goaway: Option<&Goaway>) -> String {
    goaway.map(|g| format!(" ({g})")).unwrap_or_default()
}

impl ClientError {
    /// The server's error code: that of an API error, or that of the goaway
    /// which closed the connection under a call. Tests and retry logic
    /// branch on it (`err.code() == Some("session_kicked")`).
    #[must_use]
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            Self::Closed(Some(goaway)) => Some(&goaway.code),
            Self::Closed(None) | Self::Timeout(_) | Self::Transport(_) | Self::Protocol(_) => None,
        }
    }

    /// How long the server asked us to wait before retrying, if it did.
    #[must_use]
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Api { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

impl From<ErrorBody> for ClientError {
    fn from(body: ErrorBody) -> Self {
        Self::Api {
            code: body.code,
            message: body.message,
            retry_after_ms: body.retry_after_ms,
        }
    }
}
