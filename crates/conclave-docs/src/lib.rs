//! Collaborative documents without I/O.
//!
//! A [`Room`] holds one Yjs document (`yrs`) and speaks the y-websocket
//! protocol with the connections editing it: the y-protocols sync exchange
//! (v1 updates everywhere), awareness with its clock rule and 30 s expiry,
//! query-awareness, and read-only connections. Each call returns
//! [`Effects`]: what to send to whom, and which updates to persist first.
//! Time is an argument; nothing here reads a clock, a socket or a disk.
//!
//! The byte-level rules are in [`message`] and [`awareness`]; the server
//! moves the bytes and stores the updates.

pub mod awareness;
pub mod history;
pub mod hocuspocus;
mod lib0;
pub mod message;
mod room;

pub use awareness::{AWARENESS_TIMEOUT_MS, AwarenessEntry, AwarenessTable};
pub use history::{merged_state, restore_update};
pub use room::{
    AWARENESS_CLIENTS_PER_CONNECTION_MAX, Access, ConnectionId, Effects, Outbound, Recipients, Room,
};

/// Why a frame or a stored state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// The y-websocket framing or an awareness update does not decode.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A sync step 2 or update is not a valid v1 Yjs update.
    #[error("invalid update: {0}")]
    InvalidUpdate(String),
    #[error(
        "a connection may introduce at most {AWARENESS_CLIENTS_PER_CONNECTION_MAX} awareness clients"
    )]
    TooManyAwarenessClients,
    /// The frame came from a connection the room does not know.
    #[error("the connection is not in this room")]
    UnknownConnection,
    /// A stored snapshot or update does not decode or apply.
    #[error("stored document state is unreadable: {0}")]
    Corrupt(String),
}

#[cfg(test)]
pub(crate) mod test_vectors {
    /// `"00 0a ff"` as bytes.
    pub(crate) fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
            .collect()
    }
}
