use conclave_core::ErrorCode;
use thiserror::Error;

use crate::frame_type::FrameType;

/// Everything that can go wrong while encoding or decoding CCP-1 frames.
///
/// The variants that come out of the frame decoder are protocol violations:
/// once the peer has sent bytes we cannot frame, we no longer know where the
/// next frame starts, so the connection has to end (see
/// [`CodecError::ends_connection`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// A varint ran past 10 bytes, or its 10th byte carries bits that do
    /// not fit in a `u64`.
    #[error("varint is longer than 10 bytes or does not fit in u64")]
    VarintOverflow,
    /// A varint used more bytes than its value needs.
    #[error("varint is not minimally encoded")]
    NonCanonicalVarint,
    /// The frame type byte is not one this protocol version knows.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// `frame_len` is larger than [`crate::FRAME_LEN_MAX_BYTES`].
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// Declared (or, when encoding, computed) frame length.
        len: u64,
        /// Limit that was exceeded.
        max: u64,
    },
    /// A JSON or heartbeat payload is larger than its frame type allows.
    #[error("payload length {len} exceeds the maximum of {max} bytes for this frame type")]
    ControlTooLarge {
        /// Declared payload length.
        len: u64,
        /// Limit for the frame's payload kind.
        max: u64,
    },
    /// `payload_len` does not account for exactly the rest of the frame.
    #[error(
        "declared payload length {declared} does not match the {actual} bytes left in the frame"
    )]
    PayloadLengthMismatch {
        /// Value of the `payload_len` field.
        declared: u64,
        /// Bytes actually left in the frame after the header.
        actual: u64,
    },
    /// `frame_len` is zero, so there is not even a type byte.
    #[error("frame length is zero")]
    EmptyFrame,
    /// The frame ends before its header (type and three varints) does.
    #[error("frame ends inside its header")]
    TruncatedHeader,
    /// The payload of a JSON frame is not a JSON object of the expected shape.
    #[error("invalid JSON payload: {0}")]
    InvalidJson(String),
    /// JSON was asked of a frame type whose payload is not JSON.
    #[error("frame type {0:?} does not carry a JSON payload")]
    NotJson(FrameType),
    /// The streaming decoder was handed more bytes than one maximal frame
    /// can occupy while no frame was complete.
    #[error("decoder buffer would hold {len} bytes, more than the maximum of {max}")]
    BufferFull {
        /// Bytes the buffer would have held after the push.
        len: u64,
        /// Limit of the decoder buffer.
        max: u64,
    },
}

impl CodecError {
    /// Stable snake_case code for this error, sent to the peer in `Error`
    /// and `Goaway` frames.
    ///
    /// Several variants share one code on purpose: the peer needs to know
    /// what class of mistake it made, and the exact structural detail is
    /// only useful in our own logs, where the `Display` text carries it.
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::VarintOverflow
            | Self::NonCanonicalVarint
            | Self::PayloadLengthMismatch { .. }
            | Self::EmptyFrame
            | Self::TruncatedHeader => ErrorCode::MalformedFrame,
            Self::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            Self::FrameTooLarge { .. } | Self::BufferFull { .. } => ErrorCode::FrameTooLarge,
            Self::ControlTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::NotJson(_) => ErrorCode::WrongPayloadKind,
        }
    }

    /// Whether the byte stream can no longer be trusted after this error.
    ///
    /// JSON errors concern one well-framed payload, so the server may answer
    /// with an `Error` frame and keep the connection; everything else means
    /// we lost (or refused to keep) frame synchronisation.
    #[must_use]
    pub fn ends_connection(&self) -> bool {
        !matches!(self, Self::InvalidJson(_) | Self::NotJson(_))
    }
}
