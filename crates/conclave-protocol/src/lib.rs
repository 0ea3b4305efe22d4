//! Sans-IO wire codec for the Conclave chat protocol (CCP-1 framing).
//!
//! This crate turns bytes into [`Frame`]s and back and nothing else: it
//! performs no I/O, keeps no clock and owns no sockets, so the same code
//! serves TCP+Noise, QUIC streams and WebSocket binary messages, and can be
//! tested and fuzzed exhaustively. Everything that reads peer-supplied bytes
//! checks lengths against the limits below before allocating and reports
//! problems as [`CodecError`] values, never as panics.
//!
//! [`api`] is the RPC schema: every route's request and response types,
//! the envelopes that carry them, and the pushed events.
//!
//! The byte-level format is specified in `docs/PROTOCOL.md`.

pub mod api;
mod decode;
mod error;
mod frame;
mod frame_type;
mod json;
pub mod varint;

pub use decode::{Decoded, FrameDecoder, decode_frame};
pub use error::CodecError;
pub use frame::Frame;
pub use frame_type::{FrameType, PayloadKind};
pub use json::parse_json_payload;

/// Version of the framing and envelopes this crate implements; it changes
/// only with an incompatible wire change, which peers negotiate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest `frame_len` accepted or produced: 16 MiB.
///
/// Large enough for any single media frame, Yjs update or attachment chunk,
/// small enough that a hostile peer cannot make one connection buffer more
/// than this (a `u64` length could otherwise claim exabytes).
pub const FRAME_LEN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Largest payload of a JSON ("control") frame: 256 KiB.
///
/// JSON is parsed into owned values that can take several times the input
/// size in memory, so control traffic gets a much tighter bound than opaque
/// bulk data; real requests and events are a few KiB at most.
pub const JSON_PAYLOAD_MAX_BYTES: usize = 256 * 1024;

/// Largest Ping/Pong payload: 256 bytes.
///
/// Heartbeats are answered automatically and may echo their payload, so a
/// large one would turn liveness checks into a free amplification channel;
/// 256 bytes is ample for a nonce or timestamp.
pub const HEARTBEAT_PAYLOAD_MAX_BYTES: usize = 256;

/// Plaintext capacity of one Noise transport message: 65,519 bytes.
///
/// A Noise message is at most 65,535 bytes including its 16-byte
/// authentication tag. Frames longer than this are split across several
/// Noise messages by the tunnel layer; the framing itself does not care.
pub const NOISE_PLAINTEXT_MAX_BYTES: usize = 65_535 - 16;

/// Room beyond one maximal frame body that [`FrameDecoder`] allows for the
/// length prefix in front of it: the longest possible varint.
pub const FRAME_HEADER_ALLOWANCE_BYTES: usize = varint::VARINT_LEN_MAX_BYTES;

/// Most bytes a [`FrameDecoder`] buffers: one maximal frame plus its length
/// prefix, which bounds the receive memory of every connection.
pub const DECODER_BUFFER_MAX_BYTES: usize = FRAME_LEN_MAX_BYTES + FRAME_HEADER_ALLOWANCE_BYTES;

/// Widens a length for error reports and wire varints; `usize` is at most
/// 64 bits on every target Rust supports, so this saturation never happens
/// in practice, but it keeps the conversion free of panics and `as` casts.
pub(crate) fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
