//! Frame decoding: a one-shot function over a byte slice, and a streaming
//! decoder that owns the receive buffer of one connection.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::CodecError;
use crate::frame::Frame;
use crate::frame_type::FrameType;
use crate::{DECODER_BUFFER_MAX_BYTES, FRAME_LEN_MAX_BYTES, len_u64, varint};

/// Outcome of [`decode_frame`] when the bytes seen so far break no rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame was at the start of the buffer.
    Frame {
        /// The decoded frame; its payload is a copy, not a view of the input.
        frame: Frame,
        /// Bytes of the input the frame occupied, length prefix included.
        consumed: usize,
    },
    /// The buffer holds the start of a frame that may still turn out valid.
    Incomplete,
}

/// Decodes the frame at the start of `buf`.
///
/// Fields are checked as soon as they are readable, so a violation is
/// reported without waiting for the rest of the frame; in particular an
/// oversized `frame_len` or payload is refused before its bytes arrive.
/// Every strict prefix of a valid frame yields [`Decoded::Incomplete`].
///
/// # Errors
///
/// Any decoding variant of [`CodecError`]; all of them mean the stream can
/// no longer be framed.
pub fn decode_frame(buf: &[u8]) -> Result<Decoded, CodecError> {
    let Some((frame_len, prefix_len)) = varint::decode_u64(buf)? else {
        return Ok(Decoded::Incomplete);
    };
    if frame_len == 0 {
        return Err(CodecError::EmptyFrame);
    }
    let too_large = || CodecError::FrameTooLarge {
        len: frame_len,
        max: len_u64(FRAME_LEN_MAX_BYTES),
    };
    if frame_len > len_u64(FRAME_LEN_MAX_BYTES) {
        return Err(too_large());
    }
    let frame_len = usize::try_from(frame_len).map_err(|_| too_large())?;

    let after_prefix = buf.get(prefix_len..).unwrap_or_default();
    let complete = after_prefix.len() >= frame_len;
    // Never look past this frame: a header field cut off by frame_len must
    // not be completed with bytes that belong to the next frame.
    let body = after_prefix.get(..frame_len).unwrap_or(after_prefix);
    let mut reader = HeaderReader {
        body,
        pos: 0,
        complete,
    };

    let Some(type_byte) = reader.byte()? else {
        return Ok(Decoded::Incomplete);
    };
    let frame_type = FrameType::try_from(type_byte)?;
    let Some(channel_id) = reader.varint()? else {
        return Ok(Decoded::Incomplete);
    };
    let Some(sequence) = reader.varint()? else {
        return Ok(Decoded::Incomplete);
    };
    let Some(payload_len) = reader.varint()? else {
        return Ok(Decoded::Incomplete);
    };

    let header_len = reader.pos;
    let actual = len_u64(frame_len.saturating_sub(header_len));
    if payload_len != actual {
        return Err(CodecError::PayloadLengthMismatch {
            declared: payload_len,
            actual,
        });
    }
    let payload_max = len_u64(frame_type.payload_kind().payload_max_bytes());
    if payload_len > payload_max {
        return Err(CodecError::ControlTooLarge {
            len: payload_len,
            max: payload_max,
        });
    }
    if !complete {
        return Ok(Decoded::Incomplete);
    }

    let payload = body.get(header_len..).unwrap_or_default();
    Ok(Decoded::Frame {
        frame: Frame {
            frame_type,
            channel_id,
            sequence,
            payload: Bytes::copy_from_slice(payload),
        },
        consumed: prefix_len.saturating_add(frame_len),
    })
}

/// Reads header fields from the part of a frame body received so far.
struct HeaderReader<'a> {
    body: &'a [u8],
    pos: usize,
    /// Whether `body` is the whole frame body, so running out of bytes is a
    /// malformed frame rather than a reason to wait.
    complete: bool,
}

impl HeaderReader<'_> {
    fn rest(&self) -> &[u8] {
        self.body.get(self.pos..).unwrap_or_default()
    }

    fn out_of_bytes<T>(&self) -> Result<Option<T>, CodecError> {
        if self.complete {
            Err(CodecError::TruncatedHeader)
        } else {
            Ok(None)
        }
    }

    fn byte(&mut self) -> Result<Option<u8>, CodecError> {
        match self.rest().first().copied() {
            Some(byte) => {
                self.pos = self.pos.saturating_add(1);
                Ok(Some(byte))
            }
            None => self.out_of_bytes(),
        }
    }

    fn varint(&mut self) -> Result<Option<u64>, CodecError> {
        match varint::decode_u64(self.rest())? {
            Some((value, read)) => {
                self.pos = self.pos.saturating_add(read);
                Ok(Some(value))
            }
            None => self.out_of_bytes(),
        }
    }
}

/// Streaming decoder holding the unframed bytes of one connection.
///
/// Feed it whatever the transport delivers with [`FrameDecoder::push`], then
/// call [`FrameDecoder::next_frame`] until it returns `Ok(None)`. Memory is
/// bounded by [`DECODER_BUFFER_MAX_BYTES`]; reading at most
/// [`FrameDecoder::remaining_capacity`] bytes from the transport before each
/// push keeps a well-behaved peer from ever hitting that bound.
///
/// The first error poisons the decoder: every later call returns it again,
/// because a peer that broke framing once cannot be resynchronised.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
    poisoned: Option<CodecError>,
}

/// After a large frame the buffer would otherwise keep its peak capacity for
/// the life of the connection; idle connections vastly outnumber busy ones,
/// so give anything above this back once the buffer drains.
const RETAINED_CAPACITY_MAX_BYTES: usize = 64 * 1024;

impl FrameDecoder {
    /// An empty decoder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    ///
    /// # Errors
    ///
    /// [`CodecError::BufferFull`] if the buffer would exceed
    /// [`DECODER_BUFFER_MAX_BYTES`] (nothing is appended), or the error that
    /// poisoned the decoder earlier.
    pub fn push(&mut self, data: &[u8]) -> Result<(), CodecError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let len = self.buf.len().saturating_add(data.len());
        if len > DECODER_BUFFER_MAX_BYTES {
            return Err(self.poison(CodecError::BufferFull {
                len: len_u64(len),
                max: len_u64(DECODER_BUFFER_MAX_BYTES),
            }));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Takes the next complete frame out of the buffer, if there is one.
    ///
    /// # Errors
    ///
    /// Whatever [`decode_frame`] reports, or the error that poisoned the
    /// decoder earlier.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, CodecError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        match decode_frame(&self.buf) {
            Ok(Decoded::Incomplete) => Ok(None),
            Ok(Decoded::Frame { frame, consumed }) => {
                self.buf.advance(consumed.min(self.buf.len()));
                if self.buf.is_empty() && self.buf.capacity() > RETAINED_CAPACITY_MAX_BYTES {
                    self.buf = BytesMut::new();
                }
                Ok(Some(frame))
            }
            Err(err) => Err(self.poison(err)),
        }
    }

    /// Bytes received but not yet returned as frames.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// How many more bytes [`FrameDecoder::push`] accepts right now; zero
    /// once poisoned.
    #[must_use]
    pub fn remaining_capacity(&self) -> usize {
        if self.poisoned.is_some() {
            0
        } else {
            DECODER_BUFFER_MAX_BYTES.saturating_sub(self.buf.len())
        }
    }

    /// The error that ended decoding, if any.
    #[must_use]
    pub fn error(&self) -> Option<&CodecError> {
        self.poisoned.as_ref()
    }

    fn poison(&mut self, err: CodecError) -> CodecError {
        // The buffered bytes will never be decoded, so do not hold on to them.
        self.buf = BytesMut::new();
        self.poisoned = Some(err.clone());
        err
    }
}
