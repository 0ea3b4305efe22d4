//! Unsigned LEB128 varints restricted to `u64` and to their shortest form.
//!
//! Rejecting over-long encodings keeps every value, and therefore every
//! frame, down to exactly one byte representation, so a decoded frame
//! re-encodes to the bytes it came from.

use bytes::BufMut;

use crate::error::CodecError;

/// A `u64` needs at most ten 7-bit groups (`ceil(64 / 7)`); anything longer
/// cannot be a valid value and is refused without reading further.
pub const VARINT_LEN_MAX_BYTES: usize = 10;

const CONTINUATION_BIT: u8 = 0x80;
const GROUP_MASK: u8 = 0x7f;
const GROUP_BITS: usize = 7;
/// Only the lowest bit of the 10th group is left inside a `u64` (9 * 7 = 63).
const LAST_GROUP_MAX: u8 = 0x01;

/// Number of bytes [`encode_u64`] writes for `value`.
#[must_use]
pub fn encoded_len(value: u64) -> usize {
    let significant_bits = 64 - value.leading_zeros() as usize;
    significant_bits.div_ceil(GROUP_BITS).max(1)
}

/// Appends the canonical encoding of `value` to `out`.
pub fn encode_u64(value: u64, out: &mut Vec<u8>) {
    put_u64(value, out);
}

/// Writes the canonical encoding of `value` into any [`BufMut`].
pub fn put_u64<B: BufMut + ?Sized>(value: u64, out: &mut B) {
    let mut rest = value;
    while rest > u64::from(GROUP_MASK) {
        // Truncation is the point: we emit the low seven bits of each group.
        out.put_u8((rest as u8 & GROUP_MASK) | CONTINUATION_BIT);
        rest >>= GROUP_BITS;
    }
    out.put_u8(rest as u8);
}

/// Decodes one varint from the start of `buf`.
///
/// Returns `Ok(Some((value, bytes_read)))`, or `Ok(None)` when `buf` ends
/// before the varint does (and it could still become valid), so callers can
/// wait for more bytes.
///
/// # Errors
///
/// [`CodecError::VarintOverflow`] if the varint cannot fit in a `u64`, and
/// [`CodecError::NonCanonicalVarint`] if it is longer than needed.
pub fn decode_u64(buf: &[u8]) -> Result<Option<(u64, usize)>, CodecError> {
    let mut value = 0u64;
    for (index, &byte) in buf.iter().take(VARINT_LEN_MAX_BYTES).enumerate() {
        // The continuation bit alone makes the 10th byte exceed the limit, so
        // this also catches varints that try to run to an 11th byte.
        if index == VARINT_LEN_MAX_BYTES - 1 && byte > LAST_GROUP_MAX {
            return Err(CodecError::VarintOverflow);
        }
        value |= u64::from(byte & GROUP_MASK) << (GROUP_BITS * index);
        if byte & CONTINUATION_BIT == 0 {
            // A zero final group adds nothing, so the byte before it could
            // have ended the varint: that is the only way to be over-long.
            if byte == 0 && index > 0 {
                return Err(CodecError::NonCanonicalVarint);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_u64(value, &mut out);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(
            enc(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    #[test]
    fn encoded_len_boundaries() {
        assert_eq!(encoded_len(0), 1);
        assert_eq!(encoded_len(127), 1);
        assert_eq!(encoded_len(128), 2);
        assert_eq!(encoded_len((1 << 14) - 1), 2);
        assert_eq!(encoded_len(1 << 14), 3);
        assert_eq!(encoded_len(1 << 63), 10);
        assert_eq!(encoded_len(u64::MAX), 10);
    }

    #[test]
    fn decodes_and_reports_length_read() {
        assert_eq!(decode_u64(&[0xac, 0x02, 0xff]), Ok(Some((300, 2))));
        assert_eq!(
            decode_u64(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Ok(Some((u64::MAX, 10)))
        );
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        assert_eq!(decode_u64(&[]), Ok(None));
        assert_eq!(decode_u64(&[0x80]), Ok(None));
        assert_eq!(decode_u64(&[0xff; 9]), Ok(None));
    }

    #[test]
    fn overflow_is_rejected() {
        let mut too_big = [0xff; 10];
        too_big[9] = 0x02;
        assert_eq!(decode_u64(&too_big), Err(CodecError::VarintOverflow));
        assert_eq!(decode_u64(&[0xff; 10]), Err(CodecError::VarintOverflow));
        assert_eq!(decode_u64(&[0x80; 11]), Err(CodecError::VarintOverflow));
    }

    #[test]
    fn over_long_encodings_are_rejected() {
        assert_eq!(
            decode_u64(&[0x80, 0x00]),
            Err(CodecError::NonCanonicalVarint)
        );
        assert_eq!(
            decode_u64(&[0xac, 0x82, 0x00]),
            Err(CodecError::NonCanonicalVarint)
        );
        let mut ten_zero = [0x80; 10];
        ten_zero[9] = 0x00;
        assert_eq!(decode_u64(&ten_zero), Err(CodecError::NonCanonicalVarint));
    }
}
