use crate::error::CodecError;
use crate::{FRAME_LEN_MAX_BYTES, HEARTBEAT_PAYLOAD_MAX_BYTES, JSON_PAYLOAD_MAX_BYTES};

/// The type byte of a frame.
///
/// `0x01..=0x14` are frozen: they keep the numbers of the predecessor
/// protocol so that its captures and tooling still read correctly.
/// Conclave's own types start at `0x20` so that a glance at the number
/// tells which protocol generation a frame type comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    /// Client greeting that opens a session.
    Hello = 0x01,
    /// Credentials for the session.
    Auth = 0x02,
    /// Subscribe to a channel.
    Join = 0x03,
    /// Unsubscribe from a channel.
    Leave = 0x04,
    /// Chat message body (end-to-end encrypted, hence opaque).
    Msg = 0x05,
    /// Acknowledgement of a received sequence number.
    Ack = 0x06,
    /// Typing indicator.
    Typing = 0x07,
    /// Presence change.
    Presence = 0x08,
    /// Encryption key material update.
    KeyUpdate = 0x09,
    /// Create a group.
    GroupCreate = 0x0a,
    /// Invite to a group.
    GroupInvite = 0x0b,
    /// Group membership or metadata event.
    GroupEvent = 0x0c,
    /// Error report that does not close the connection.
    Error = 0x0d,
    /// Start a call.
    CallOffer = 0x0e,
    /// Accept a call.
    CallAnswer = 0x0f,
    /// End a call.
    CallEnd = 0x10,
    /// Encoded audio frame (opaque).
    VoiceFrame = 0x11,
    /// Encoded video frame (opaque).
    VideoFrame = 0x12,
    /// Call quality statistics.
    CallStats = 0x13,
    /// Change of media transport parameters.
    TransportUpdate = 0x14,
    /// Request in the RPC envelope.
    RpcRequest = 0x20,
    /// Response in the RPC envelope.
    RpcResponse = 0x21,
    /// Server-pushed event.
    Event = 0x22,
    /// Liveness probe.
    Ping = 0x23,
    /// Answer to a liveness probe.
    Pong = 0x24,
    /// Server explains why it is closing the connection.
    Goaway = 0x25,
    /// Opaque Yjs / y-protocols update for a collaborative document.
    Yjs = 0x30,
}

/// How a frame's payload is interpreted and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// A JSON object, at most [`JSON_PAYLOAD_MAX_BYTES`].
    Json,
    /// Bytes the codec never looks into, bounded only by the frame limit.
    Opaque,
    /// Ping/Pong bytes, at most [`HEARTBEAT_PAYLOAD_MAX_BYTES`].
    Heartbeat,
}

impl PayloadKind {
    /// Largest payload this kind may carry. For [`PayloadKind::Opaque`] this
    /// is the frame limit, which the header bytes also count against, so it
    /// is an upper bound rather than an exact maximum.
    #[must_use]
    pub const fn payload_max_bytes(self) -> usize {
        match self {
            Self::Json => JSON_PAYLOAD_MAX_BYTES,
            Self::Opaque => FRAME_LEN_MAX_BYTES,
            Self::Heartbeat => HEARTBEAT_PAYLOAD_MAX_BYTES,
        }
    }
}

impl FrameType {
    /// Every frame type, in wire-number order.
    pub const ALL: [Self; 27] = [
        Self::Hello,
        Self::Auth,
        Self::Join,
        Self::Leave,
        Self::Msg,
        Self::Ack,
        Self::Typing,
        Self::Presence,
        Self::KeyUpdate,
        Self::GroupCreate,
        Self::GroupInvite,
        Self::GroupEvent,
        Self::Error,
        Self::CallOffer,
        Self::CallAnswer,
        Self::CallEnd,
        Self::VoiceFrame,
        Self::VideoFrame,
        Self::CallStats,
        Self::TransportUpdate,
        Self::RpcRequest,
        Self::RpcResponse,
        Self::Event,
        Self::Ping,
        Self::Pong,
        Self::Goaway,
        Self::Yjs,
    ];

    /// The wire number of this type.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// How this type's payload is bounded and interpreted.
    #[must_use]
    pub const fn payload_kind(self) -> PayloadKind {
        match self {
            Self::Msg | Self::VoiceFrame | Self::VideoFrame | Self::Yjs => PayloadKind::Opaque,
            Self::Ping | Self::Pong => PayloadKind::Heartbeat,
            _ => PayloadKind::Json,
        }
    }
}

impl TryFrom<u8> for FrameType {
    type Error = CodecError;

    fn try_from(byte: u8) -> Result<Self, CodecError> {
        Ok(match byte {
            0x01 => Self::Hello,
            0x02 => Self::Auth,
            0x03 => Self::Join,
            0x04 => Self::Leave,
            0x05 => Self::Msg,
            0x06 => Self::Ack,
            0x07 => Self::Typing,
            0x08 => Self::Presence,
            0x09 => Self::KeyUpdate,
            0x0a => Self::GroupCreate,
            0x0b => Self::GroupInvite,
            0x0c => Self::GroupEvent,
            0x0d => Self::Error,
            0x0e => Self::CallOffer,
            0x0f => Self::CallAnswer,
            0x10 => Self::CallEnd,
            0x11 => Self::VoiceFrame,
            0x12 => Self::VideoFrame,
            0x13 => Self::CallStats,
            0x14 => Self::TransportUpdate,
            0x20 => Self::RpcRequest,
            0x21 => Self::RpcResponse,
            0x22 => Self::Event,
            0x23 => Self::Ping,
            0x24 => Self::Pong,
            0x25 => Self::Goaway,
            0x30 => Self::Yjs,
            other => return Err(CodecError::UnknownFrameType(other)),
        })
    }
}

impl From<FrameType> for u8 {
    fn from(frame_type: FrameType) -> Self {
        frame_type.as_u8()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_byte_round_trips() {
        for frame_type in FrameType::ALL {
            assert_eq!(FrameType::try_from(frame_type as u8), Ok(frame_type));
            assert_eq!(u8::from(frame_type), frame_type.as_u8());
        }
    }

    #[test]
    fn all_is_sorted_and_complete() {
        assert!(FrameType::ALL.windows(2).all(|w| w[0] < w[1]));
        let known = (0..=u8::MAX)
            .filter(|&b| FrameType::try_from(b).is_ok())
            .count();
        assert_eq!(known, FrameType::ALL.len());
    }

    #[test]
    fn unknown_bytes_are_rejected_with_the_byte() {
        for byte in [0x00, 0x15, 0x1f, 0x26, 0x2f, 0x31, 0xff] {
            assert_eq!(
                FrameType::try_from(byte),
                Err(CodecError::UnknownFrameType(byte))
            );
        }
    }

    #[test]
    fn frozen_numbers_did_not_move() {
        assert_eq!(FrameType::Hello as u8, 0x01);
        assert_eq!(FrameType::Msg as u8, 0x05);
        assert_eq!(FrameType::Error as u8, 0x0d);
        assert_eq!(FrameType::TransportUpdate as u8, 0x14);
        assert_eq!(FrameType::RpcRequest as u8, 0x20);
        assert_eq!(FrameType::Goaway as u8, 0x25);
        assert_eq!(FrameType::Yjs as u8, 0x30);
    }

    #[test]
    fn payload_kinds() {
        let opaque = [
            FrameType::Msg,
            FrameType::VoiceFrame,
            FrameType::VideoFrame,
            FrameType::Yjs,
        ];
        let heartbeat = [FrameType::Ping, FrameType::Pong];
        for frame_type in FrameType::ALL {
            let expected = if opaque.contains(&frame_type) {
                PayloadKind::Opaque
            } else if heartbeat.contains(&frame_type) {
                PayloadKind::Heartbeat
            } else {
                PayloadKind::Json
            };
            assert_eq!(frame_type.payload_kind(), expected, "{frame_type:?}");
        }
        assert_eq!(PayloadKind::Json.payload_max_bytes(), 262_144);
        assert_eq!(PayloadKind::Heartbeat.payload_max_bytes(), 256);
        assert_eq!(PayloadKind::Opaque.payload_max_bytes(), 16 * 1024 * 1024);
    }
}
