//! The vocabulary every other Conclave crate shares.
//!
//! This crate is part of the pure layer: it does no I/O, reads no clock and
//! draws no randomness, so it can be used from protocol state machines,
//! storage backends and clients alike.

pub mod error_code;
pub mod ids;
pub mod limits;

pub use error_code::ErrorCode;
pub use ids::{
    ChannelId, DeviceId, DocumentId, FileId, GroupId, MessageId, RequestId, SessionId, UserId,
};
