//! The frame value and its encoder.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CodecError;
use crate::frame_type::FrameType;
use crate::{FRAME_LEN_MAX_BYTES, len_u64, varint};

/// Bytes in the frame body before the first varint.
const TYPE_LEN_BYTES: usize = 1;

/// One CCP-1 frame.
///
/// Holding a `Frame` does not mean it is within limits: build one freely,
/// and [`Frame::encode`] refuses the ones that the decoder would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// What the payload means and how it is bounded.
    pub frame_type: FrameType,
    /// Channel the frame belongs to; 0 is the connection itself.
    pub channel_id: u64,
    /// Sender-chosen sequence number (request id, event pts, ...).
    pub sequence: u64,
    /// Payload bytes; JSON for [`crate::PayloadKind::Json`] types.
    pub payload: Bytes,
}

impl Frame {
    /// Builds a frame; limits are checked when it is encoded.
    #[must_use]
    pub fn new(
        frame_type: FrameType,
        channel_id: u64,
        sequence: u64,
        payload: impl Into<Bytes>,
    ) -> Self {
        Self {
            frame_type,
            channel_id,
            sequence,
            payload: payload.into(),
        }
    }

    /// Length of the frame body, i.e. the value of the `frame_len` prefix.
    ///
    /// Saturates instead of overflowing so that asking about an absurd
    /// frame gives an absurd number rather than a panic.
    #[must_use]
    pub fn body_len(&self) -> usize {
        let payload_len = self.payload.len();
        TYPE_LEN_BYTES
            .saturating_add(varint::encoded_len(self.channel_id))
            .saturating_add(varint::encoded_len(self.sequence))
            .saturating_add(varint::encoded_len(len_u64(payload_len)))
            .saturating_add(payload_len)
    }

    /// Total number of bytes [`Frame::encode`] produces, length prefix
    /// included.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let body_len = self.body_len();
        varint::encoded_len(len_u64(body_len)).saturating_add(body_len)
    }

    /// Checks the frame against the limits the decoder enforces.
    ///
    /// # Errors
    ///
    /// [`CodecError::FrameTooLarge`] or [`CodecError::ControlTooLarge`].
    pub fn check_limits(&self) -> Result<(), CodecError> {
        let body_len = self.body_len();
        if body_len > FRAME_LEN_MAX_BYTES {
            return Err(CodecError::FrameTooLarge {
                len: len_u64(body_len),
                max: len_u64(FRAME_LEN_MAX_BYTES),
            });
        }
        let payload_max = self.frame_type.payload_kind().payload_max_bytes();
        if self.payload.len() > payload_max {
            return Err(CodecError::ControlTooLarge {
                len: len_u64(self.payload.len()),
                max: len_u64(payload_max),
            });
        }
        Ok(())
    }

    /// Encodes the frame into a fresh buffer.
    ///
    /// # Errors
    ///
    /// Same as [`Frame::check_limits`]: we never put on the wire a frame
    /// that we would reject from a peer.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let mut out = BytesMut::new();
        self.encode_into(&mut out)?;
        Ok(out.freeze())
    }

    /// Appends the encoded frame to `out`; on error `out` is left untouched.
    ///
    /// # Errors
    ///
    /// Same as [`Frame::check_limits`].
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        self.check_limits()?;
        out.reserve(self.encoded_len());
        varint::put_u64(len_u64(self.body_len()), out);
        out.put_u8(self.frame_type.as_u8());
        varint::put_u64(self.channel_id, out);
        varint::put_u64(self.sequence, out);
        varint::put_u64(len_u64(self.payload.len()), out);
        out.put_slice(&self.payload);
        Ok(())
    }
}
